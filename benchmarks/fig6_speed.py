"""Time `distcoagent reproduce fig6` at full scale (10,000 trials x 200 episodes) side by side on the
kernels compiled ahead of time (``prebuilt``, the default: no process imports numba), on numba's
kernels (``DISTCOAGENT_PREBUILT=0``) and on numpy alone (``DISTCOAGENT_KERNELS=0``), and say where
the time and the memory go.  Writes benchmarks/results/fig6_speed.json (and the figures into --out).

Each run is a fresh process (as `distcoagent reproduce fig6` is), interleaved over ``--rounds``,
best kept; it reports its wall time, the curve (both variants must print the same), and the
peak resident set of the main process and of the largest worker.  Untimed (tracing slows every
allocation): the peak traced memory (numpy arrays and Python objects) of the main process during
a full run, and of one worker's share of the trials run in this process; and, in a run sampled
from outside, the memory of the whole run, main process and workers, each page counted once
(``footprint_run``), for the prebuilt and the numba variants.  Compile times are measured too:
numba's kernels into an empty cache (a fresh install's first run pays it once) and loaded from the
cache (every process); the prebuilt module built into an empty folder (once per install and kernel
source), and found there (every study).  The benchmark's prebuilt module lives in a folder of its own.

    PYTHONPATH=. python3 benchmarks/fig6_speed.py                 # full scale, all cores
    PYTHONPATH=. python3 benchmarks/fig6_speed.py --no-numpy      # the kernels only
    PYTHONPATH=. python3 benchmarks/fig6_speed.py --profile-trials 2000 --profile-episodes 30
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distcoagent import kernels, reproduce
from distcoagent.engine import InProcessEngine

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import json, os, resource, sys, time, tracemalloc
if os.environ.get("TRACE"):
    tracemalloc.start()  # forked workers inherit it: every process traced, and slower
from distcoagent import reproduce
trials, episodes, workers, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
summary = reproduce.fig6(trials, episodes, seed=0, out=out, workers=workers)
wall = time.perf_counter() - start
print(json.dumps({"wall_seconds": wall, "train_seconds": summary["seconds"],
                  "final_mean_last10": summary["final_mean_last10"], "mean_return": summary["mean_return"],
                  "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "peak_traced_main_mib": tracemalloc.get_traced_memory()[1] / 2**20}))
"""


VARIANTS = {"prebuilt": {"DISTCOAGENT_KERNELS": "1", "DISTCOAGENT_PREBUILT": "1"},
            "numba": {"DISTCOAGENT_KERNELS": "1", "DISTCOAGENT_PREBUILT": "0"},
            "numpy": {"DISTCOAGENT_KERNELS": "0", "DISTCOAGENT_PREBUILT": "0"}}
# this benchmark's own prebuilt module (made by the first build, removed at the end of main)
PREBUILT_DIR = str(Path(tempfile.gettempdir()) / f"fig6-prebuilt-{os.getpid()}")
PREPARE = """
import sys, time
from distcoagent import reproduce
from distcoagent.kernels import prebuilt
network, env_id, env_kwargs = reproduce.paper_setup()
start = time.perf_counter()
ready = prebuilt.prepare(reproduce._learning_slice, (network, env_id, env_kwargs, 0, 1, 1, 0, 2))
print(time.perf_counter() - start if ready else -1)
"""


def _env(variant: str, traced: bool = False) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **VARIANTS[variant], "DISTCOAGENT_PREBUILT_DIR": PREBUILT_DIR,
            "TRACE": "1" if traced else ""}


def prebuilt_times() -> dict:
    """Seconds to build the prebuilt module into an empty folder (numba compiles or loads the kernels the
    study uses, then pycc writes and links them), and for a later study to find and load it."""
    def prepare() -> float:
        proc = subprocess.run([sys.executable, "-c", PREPARE], env=_env("prebuilt"), capture_output=True,
                              text=True, cwd=str(ROOT), timeout=1800)
        seconds = float(proc.stdout.split()[-1]) if proc.returncode == 0 else -1.0
        if seconds < 0:
            raise SystemExit(f"the prebuilt module could not be built: {proc.stderr}")
        return seconds
    return {"prebuilt_build_s": prepare(), "prebuilt_load_s": prepare()}


def fig6_run(variant: str, trials: int, episodes: int, workers: int, out: str, traced: bool = False) -> dict:
    env = _env(variant, traced)
    proc = subprocess.run([sys.executable, "-c", RUN, str(trials), str(episodes), str(workers), out], env=env,
                          capture_output=True, text=True, cwd=str(ROOT), timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux: /proc/PID/task/TID/children)."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            for task in os.listdir(f"/proc/{tree[i]}/task"):
                tree += [int(c) for c in Path(f"/proc/{tree[i]}/task/{task}/children").read_text().split()]
        except OSError:  # it ended meanwhile
            pass
        i += 1
    return tree


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(anonymous memory, shared pages split between the processes that share them: ``Pss_Anon``;
    resident pages of mapped files, the libraries' code and data: ``RssFile``) of one process, in KiB."""
    def field(text: str, name: str) -> int:
        return int(text.split(name + ":")[1].split()[0])

    try:
        return (field(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss_Anon"),
                field(Path(f"/proc/{pid}/status").read_text(), "RssFile"))
    except (OSError, IndexError, ValueError):  # gone, or exiting (a zombie has no memory to report)
        return None


def footprint_run(variant: str, trials: int, episodes: int, workers: int, out: str, every: float = 0.02) -> dict:
    """The memory of a whole run (the main process and its workers), sampled every ``every`` seconds in
    a run of its own (sampling takes CPU).  Footprint: the processes' anonymous memory, each page once
    (forked workers share their parent's pages until they write them), plus the library pages of the
    process that maps the most (the processes map the same libraries; a page of a shared library also
    serves other programs, so it is counted in full, once).  None where /proc lacks the fields."""
    env = _env(variant)
    errors = tempfile.TemporaryFile("w+")  # read at the end: a pipe nobody reads could fill and block the run
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(trials), str(episodes), str(workers), out], env=env,
                            stdout=subprocess.DEVNULL, stderr=errors, text=True, cwd=str(ROOT))
    peak = {"footprint_mib": 0.0, "anon_mib": 0.0, "library_mib": 0.0, "processes": 0}
    deadline = time.monotonic() + 3600
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("footprint_run: the sampled run took more than an hour")
        sizes = [m for m in map(_memory_kib, _process_tree(proc.pid)) if m is not None]
        if sizes:
            anon, library = sum(a for a, _ in sizes) / 1024, max(f for _, f in sizes) / 1024
            if anon + library > peak["footprint_mib"]:
                peak = {"footprint_mib": anon + library, "anon_mib": anon, "library_mib": library,
                        "processes": len(sizes)}
        time.sleep(every)
    if proc.returncode != 0:
        errors.seek(0)
        raise SystemExit(errors.read())
    return peak if peak["processes"] else None


def traced_worker_mib(trials: int, episodes: int, workers: int) -> float:
    """Peak traced memory of a worker's first job, run here as the worker runs it (a worker runs its
    jobs one after the other)."""
    import tracemalloc

    network, env_id, env_kwargs = reproduce.paper_setup()
    job = reproduce.learning_jobs(network, env_id, env_kwargs, trials, episodes, 0, workers)[0]
    # the kernels loaded first, untraced: numba's own objects are not the job's arrays (numba's kernels here:
    # the job's arrays are the same on prebuilt ones)
    InProcessEngine(network, env_id, env_kwargs, trials=2, seed=0).train(1)
    tracemalloc.start()
    reproduce._learning_slice(job)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def profile(trials: int, episodes: int) -> dict:
    """One process, cProfile: the engine's hot spots by own time."""
    network, env_id, env_kwargs = reproduce.paper_setup()
    engine = InProcessEngine(network, env_id, env_kwargs, trials=trials, seed=0)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = engine.train(episodes)
    profiler.disable()
    seconds = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    rows = sorted(((v[2], v[3], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in stats.stats.items()),
                  reverse=True)[:15]
    return {"trials": trials, "episodes": episodes, "ticks": result.ticks, "seconds": seconds,
            "ms_per_tick": 1000 * seconds / result.ticks,
            "us_per_trial_tick": 1e6 * seconds / (result.ticks * trials),
            "top_own_time": [{"function": f, "own_s": round(own, 3), "cumulative_s": round(cum, 3),
                              "share": round(own / seconds, 3)} for own, cum, f in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy-only runs")
    parser.add_argument("--out", default="benchmarks/fig6")
    parser.add_argument("--profile-trials", type=int, default=0, help="also profile one process at this size")
    parser.add_argument("--profile-episodes", type=int, default=30)
    parser.add_argument("--json", default="benchmarks/results/fig6_speed.json")
    args = parser.parse_args()
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()},
              "trials": args.trials, "episodes": args.episodes, "workers": args.workers, "rounds": args.rounds,
              **kernels.compile_times(), **prebuilt_times(), "runs": {}}
    variants = [v for v in VARIANTS if not (args.no_numpy and v == "numpy")]
    for _ in range(args.rounds):
        for name in variants:
            run = fig6_run(name, args.trials, args.episodes, args.workers, f"{args.out}/{name}")
            best = report["runs"].get(name)
            if best is None or run["wall_seconds"] < best["wall_seconds"]:
                report["runs"][name] = run
    for run in report["runs"].values():
        del run["peak_traced_main_mib"]  # not traced: see below
    report["peak_traced_main_mib"] = fig6_run("prebuilt", args.trials, args.episodes, args.workers,
                                              f"{args.out}/traced", traced=True)["peak_traced_main_mib"]
    report["peak_traced_worker_mib"] = traced_worker_mib(args.trials, args.episodes, args.workers)
    report["peak_footprint"] = {name: footprint_run(name, args.trials, args.episodes, args.workers,
                                                    f"{args.out}/sampled-{name}") for name in ("prebuilt", "numba")}
    curves = {name: run.pop("mean_return") for name, run in report["runs"].items()}
    report["same_curve"] = len({json.dumps(c) for c in curves.values()}) == 1
    print(f"Figure 6: {args.trials} trials x {args.episodes} episodes, {args.workers} workers, "
          f"best of {args.rounds} interleaved round(s)")
    print(f"numba's kernels: compile {report['compile_cold_s']:.1f} s into an empty cache (once per install), "
          f"{report['compile_cached_s']:.2f} s to load from it (once per process)")
    print(f"prebuilt module: built in {report['prebuilt_build_s']:.1f} s into an empty folder (once per install "
          f"and kernel source), found and loaded in {report['prebuilt_load_s']:.2f} s (once per study)")
    print(f"{'variant':<10}{'wall s':>8}{'train s':>9}{'final mean (last 10)':>22}{'peak RSS main':>15}"
          f"{'peak RSS worker':>17}{'whole run':>11}  (MiB)")
    for name, run in report["runs"].items():
        footprint = report["peak_footprint"].get(name)
        whole = f"{footprint['footprint_mib']:>11.0f}" if footprint else f"{'-':>11}"
        print(f"{name:<10}{run['wall_seconds']:>8.2f}{run['train_seconds']:>9.2f}{run['final_mean_last10']:>22.5f}"
              f"{run['peak_rss_main_mib']:>15.0f}{run['peak_rss_worker_mib']:>17.0f}{whole}")
    print(f"peak traced memory (prebuilt): main process {report['peak_traced_main_mib']:.1f} MiB, "
          f"a worker {report['peak_traced_worker_mib']:.1f} MiB")
    for name, footprint in report["peak_footprint"].items():
        if footprint is not None:
            print(f"memory of the whole run ({name}; {footprint['processes']} processes at the peak, sampled): "
                  f"{footprint['footprint_mib']:.0f} MiB = {footprint['anon_mib']:.0f} anonymous (each page once)"
                  f" + {footprint['library_mib']:.0f} of libraries")
    if len(curves) > 1:
        print(f"same curve in every variant (every episode's mean return, all digits): {report['same_curve']}")
    wall = report["runs"]["prebuilt"]["wall_seconds"]
    print(f"goal: full Figure 6 in at most 6 s: {'met' if wall <= 6 else 'NOT met'} ({wall:.1f} s)")
    footprint = report["peak_footprint"]["prebuilt"]
    if footprint is not None:
        peak = footprint["footprint_mib"]
        run = report["runs"]["prebuilt"]
        largest = max(run["peak_rss_main_mib"], run["peak_rss_worker_mib"])
        print(f"goal: peak memory of the full Figure 6 under 150 MiB: {'met' if peak < 150 else 'NOT met'} "
              f"({peak:.0f} MiB for the whole run; largest process {largest:.0f} MiB resident)")
    if args.profile_trials:
        report["profile"] = profile(args.profile_trials, args.profile_episodes)
        print(json.dumps(report["profile"], indent=1))
    Path(args.json).write_text(json.dumps(report, indent=1))
    shutil.rmtree(PREBUILT_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
