"""The ``distcoagent`` command line: train, validate, and the commands in ``commands/``."""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import signal
import sys
import threading
from pathlib import Path

import gymnasium as gym

from .network import SpecError
from .spec import CLOCKS, ENGINES, check_env, load_spec, merge_free


STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # exit codes: 128 + the signal's number


def _default_out(spec_path: str) -> Path:
    """runs/<spec name>/<UTC time>: a fresh run directory each time."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / Path(spec_path).stem / stamp
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{stamp}-{n}")
    return out


def _free_flags(args) -> dict:
    """--env-rate, --delay NAME=SECONDS and --coagent-rate NAME=PER_SECOND as [free] table values."""
    coagents: dict = {}
    for flag, key, values in (("--delay", "delay", args.delay), ("--coagent-rate", "rate", args.coagent_rate)):
        for item in values or []:
            name, sep, number = item.partition("=")
            try:
                value = float(number)
            except ValueError:
                value = None
            if not sep or not name or value is None:
                raise SpecError(f"{flag}: expected NAME=NUMBER (a coagent and a number), got {item!r}")
            coagents.setdefault(name, {})[key] = value
    return {"env_rate": args.env_rate, "coagents": coagents}


def _train(args) -> int:
    from tqdm import tqdm

    from . import checkpoint
    from .spec import parse
    from .training import check_run_dir, read_run_config, spec_of_run, summarize, train

    for flag, value in (("--port", args.port), ("--host", args.host), ("--allow-remote", args.allow_remote or None)):
        if value is not None and not args.dashboard:
            raise SpecError(f"{flag}: only with --dashboard (it is the dashboard's)")
    args.port = 8765 if args.port is None else args.port
    args.host = "127.0.0.1" if args.host is None else args.host
    if args.dashboard and not 0 <= args.port <= 65535:
        raise SpecError(f"--port: expected a port in 0-65535, got {args.port}")

    overrides = {"episodes": args.episodes, "trials": args.trials, "seed": args.seed, "engine": args.engine,
                 "envs_per_trial": args.envs_per_trial, "micro_batches": args.micro_batches,
                 "address": args.address}
    ray_overrides = {"layout": args.layout, "coagents_per_actor": args.coagents_per_actor, "placement": args.placement,
                     "transport": args.transport, "replicas": args.replicas}
    overrides["clock"] = args.clock
    free_overrides = _free_flags(args)
    if args.resume:
        if args.spec or args.out:
            raise SpecError("--resume: give the run directory only (its spec is in its config.json), not SPEC or --out")
        if args.overwrite:
            raise SpecError("--overwrite: not with --resume (a resumed run goes on; to start it again, give its "
                            "spec with --out RUN_DIR --overwrite)")
        fixed = [k for k in ("episodes", "trials", "seed", "envs_per_trial", "micro_batches") if overrides[k] is not None]
        if fixed:
            raise SpecError(f"--{fixed[0].replace('_', '-')}: a resumed run keeps its own; only --engine, --address, "
                            "--clock, the Ray layout, placement and free-running flags, --checkpoint-every, "
                            "--dashboard and --quiet may change")
        out = Path(args.resume)
        config_file = out / "config.json"
        if not config_file.is_file():
            check_run_dir(out, resume=True, overwrite=False)  # names the path's own problem (too long, absent)
            raise SpecError(f"--resume: {out} is not a run directory (it has no config.json)")
        raw = spec_of_run(read_run_config(out))
        if raw is None:
            raise SpecError(f"--resume: {out} was started from Python with parts no spec describes (a Python "
                            "function, a subclass, an option TOML cannot hold); resume it with "
                            "distcoagent.train(..., out=RUN_DIR, resume=True)")
        raw.setdefault("train", {}).update({k: v for k, v in overrides.items() if v is not None})
        if any(v is not None for v in ray_overrides.values()):
            raw.setdefault("ray", {}).update({k: v for k, v in ray_overrides.items() if v is not None})
        merge_free(raw, free_overrides)
        spec = parse(raw, str(config_file))
    else:
        if not args.spec:
            raise SpecError("spec: expected a spec file (or --resume RUN_DIR)")
        spec = load_spec(args.spec, overrides, ray_overrides, free_overrides)
        out = Path(args.out) if args.out else _default_out(args.spec)
    for flag, value in (("--env-rate", args.env_rate), ("--delay", args.delay), ("--coagent-rate", args.coagent_rate)):
        if value is not None and spec.train.clock != "free":
            raise SpecError(f"{flag}: only with the free-running clock (--clock free, or clock = \"free\" in [train])")
    for key, value in ray_overrides.items():
        if value is not None and spec.train.engine != "ray":
            raise SpecError(f"--{key.replace('_', '-')}: only with the ray engine (--engine ray, or engine = \"ray\" "
                            "in [train]); it places the Ray actors")
    check_env(spec).close()
    if args.resume:
        check_run_dir(out, resume=True, overwrite=False)  # what train would refuse, before the note
        if not (out / checkpoint.FILE).exists():
            same = ", with the same numbers" if spec.train.clock == "tick" else ""
            print(f"note: {out} has no checkpoint (the run stopped before its first one): it starts again from "
                  f"its first episode{same}", file=sys.stderr)
    dashboard = None
    if args.dashboard:
        from .dashboard import DashboardError, start_background

        try:
            dashboard = start_background(out, args.host, args.port, allow_remote=args.allow_remote, wait_for_run=True)
        except DashboardError as error:
            raise SpecError(str(error)) from None
        print(f"dashboard: {dashboard.url}", flush=True)
    received = []

    def on_signal(number, frame):
        if received:  # a second Ctrl-C: stop now, whatever is lost
            print(f"\na second stop signal ({signal.Signals(number).name}): stopping at once, this tick not saved; "
                  f"the run resumes from its last checkpoint, if it wrote one (distcoagent train --resume {out})",
                  file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        received.append(number)
        print(f"\n{signal.Signals(number).name}: finishing the tick and writing a checkpoint "
              "(again to stop at once)", file=sys.stderr, flush=True)

    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    bar = tqdm(total=spec.train.episodes, unit="episode", disable=args.quiet or None,
               desc=f"{spec.train.trials} trial(s), {spec.train.engine}")
    try:
        result = train(spec, out=out, progress=bar.update, resume=bool(args.resume), overwrite=args.overwrite,
                       checkpoint_every=args.checkpoint_every, stop=lambda: bool(received))
    finally:
        bar.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not result.finished:
        print(f"run directory: {out}\nstopped at atomic tick {result.ticks}; checkpoint written. Resume with:\n"
              f"  distcoagent train --resume {out}", file=sys.stderr)
        return STOP_SIGNALS.get(received[0], 130) if received else 130
    if result.extra.get("trained") is False:
        print(f"note: {out} had finished its {spec.train.episodes} episodes; nothing to train (its results are "
              "written again)", file=sys.stderr)
    summary = summarize(result, spec.env_id, spec.env_kwargs)
    width = max(len(k) for k in summary)
    print(f"run directory: {out}")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    for name, counters in result.counters.items():
        print(f"  coagent {name}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    if result.extra.get("clock") == "free":  # what the free clocks realised (see docs/free-running.md)
        loops = {n: c for c in result.extra["loops"] for n in c["names"]}
        print(f"  free-running: {result.extra['steps']} environment steps in {result.seconds:.1f} s; record "
              f"{out / 'executions.msgpack'} (check it: distcoagent replay {out})")
        for name, c in result.extra["free_counters"].items():
            rate = loops[name]["loops_per_second"]
            print(f"  coagent {name}: {rate or 0:.0f} loops/s, chances {c['opportunities']}, published "
                  f"{c['published']}, retried {c['retried']}, late {c['late']}, revoked {c['revoked']}")
    if dashboard is not None:
        print(f"dashboard still at {dashboard.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            dashboard.stop()
    return 0


def _validate(args) -> int:
    spec = load_spec(args.spec)
    env = check_env(spec)
    env.close()
    net = spec.network
    print(f"{args.spec}: valid. {len(net.coagents)} coagent(s) in tick order {' -> '.join(net.order)}; "
          f"action {net.action}; env {spec.env_id} ({env.observation_space} -> {env.action_space}); "
          f"gamma {net.gamma}, {net.ticks_per_step} atomic tick(s) per step",
          file=sys.stderr if args.json else sys.stdout)  # --json: standard output is the JSON alone
    if args.json:
        print(json.dumps(net.to_config(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distcoagent",
        description="Build, train, gradient-check and distribute asynchronous coagent networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a network from a spec file; writes a run directory",
                       description="Train the network of SPEC on its environment. Flags override the "
                                   "spec's [train] table. Writes a run directory: config.json, metrics.jsonl "
                                   "(live), checkpoint.msgpack, returns.csv, curve.csv, counters.json, "
                                   "params.msgpack, summary.json and learning_curve.png. Ctrl-C (or SIGTERM) "
                                   "finishes the tick, writes a checkpoint and exits 130 (143); "
                                   "--resume RUN_DIR continues the run with the same numbers.")
    p.add_argument("spec", nargs="?", help="path to a TOML spec file (see examples/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out if there is one")
    p.add_argument("--checkpoint-every", default="300s", metavar="N|SECONDSs",
                   help="write a checkpoint every N episodes or every SECONDS (e.g. 60s), and at the end "
                        "(default 300s; 'never': only at the end and on Ctrl-C)")
    p.add_argument("--dashboard", action="store_true", help="serve the live dashboard while training")
    p.add_argument("--port", type=int, help="with --dashboard: TCP port (default 8765)")
    p.add_argument("--host", help="with --dashboard: address to bind (default 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true", help="with --dashboard: allow a non-loopback --host")
    p.add_argument("--episodes", type=int, help="episodes per environment (spec: train.episodes)")
    p.add_argument("--trials", type=int, help="independent learners run side by side, each with its own "
                                              "parameters (spec: train.trials)")
    p.add_argument("--envs-per-trial", type=int, help="environments sharing one trial's parameters")
    p.add_argument("--seed", type=int, help="the run's seed; it determines everything (spec: train.seed)")
    p.add_argument("--out", help="run directory (default: a new runs/<spec name>/<UTC time>)")
    p.add_argument("--engine", choices=ENGINES, help="inprocess (default): numpy in this process; "
                                                     "ray: one Ray actor per coagent")
    p.add_argument("--address", help="with --engine ray: join a running cluster ('auto' or HOST:PORT) "
                                      "instead of starting a local Ray")
    p.add_argument("--micro-batches", type=int, help="split trials into this many micro-batches "
                                                      "(pipelined on Ray; results do not change)")
    p.add_argument("--layout", choices=["coagents", "trials"],
                   help="with --engine ray: coagents (default): an actor per coagent, outputs passed every tick; "
                        "trials: an actor per micro-batch running the whole network at the in-process engine's "
                        "speed, for large studies (spec: ray.layout)")
    p.add_argument("--coagents-per-actor", type=int, help="with --engine ray: pack this many coagents into "
                                                          "one actor (default 1; spec: ray.coagents_per_actor)")
    p.add_argument("--placement", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="with --engine ray: put all actors in a placement group with this strategy")
    p.add_argument("--replicas", type=int, help="with --engine ray: R copies of the coagent actors, each serving "
                                                "its own shard of trials (needs --micro-batches >= R; spec: "
                                                "ray.replicas)")
    p.add_argument("--transport", choices=["compiled", "actors"],
                   help="with --engine ray: Ray Compiled Graph (default) or plain actor calls")
    p.add_argument("--clock", choices=CLOCKS, help="tick (default): one atomic tick at a time, bit-identical "
                                                   "on both engines; free (with --engine ray): the environment "
                                                   "and every coagent on their own clocks, no barrier")
    p.add_argument("--env-rate", type=float, metavar="STEPS_PER_S",
                   help="with --clock free: environment steps per second (0: as fast as it can; spec: "
                        "free.env_rate)")
    p.add_argument("--delay", action="append", metavar="NAME=SECONDS",
                   help="with --clock free: add SECONDS to each time round coagent NAME's loop (a slow unit; "
                        "repeatable; spec: free.coagents.NAME.delay)")
    p.add_argument("--coagent-rate", action="append", metavar="NAME=PER_S",
                   help="with --clock free: at most PER_S times round coagent NAME's loop per second "
                        "(repeatable; spec: free.coagents.NAME.rate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("validate", help="check a spec (and its environment) without running it",
                       description="Parse SPEC, check every field, build the environment once and check "
                                   "the network against its observation and action spaces.")
    p.add_argument("spec", help="path to a TOML spec file")
    p.add_argument("--json", action="store_true", help="print the resolved network as JSON on standard output "
                                                         "(the summary line then goes to standard error)")
    p.set_defaults(func=_validate)

    from .commands import COMMANDS

    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


MAX_MESSAGE = 2000  # characters of an error line: hostile input may put a huge value into the message


def _line(error) -> str:
    text = str(error)
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE // 2]} ... {text[-MAX_MESSAGE // 4:]}"


def _stdout_closed() -> bool:
    """Standard output's reader has gone (a pipe whose read end is closed polls as an error); then point it
    at /dev/null, so that Python's flush at exit does not report it a second time."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor behind it (a notebook), no poll
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .checks import command_line
        from .kernels import check_switch

        check_switch()
        with command_line():  # messages name the flags, not Python's keywords
            return args.func(args)
    except SpecError as error:
        print(f"distcoagent {args.command}: error: {_line(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError as error:  # (a ConnectionError) stdout closed early (`validate --json | head`): stop
        if not _stdout_closed():     # quietly, as `yes | head` does; any other pipe is an error like others
            print(f"distcoagent {args.command}: error: {error.strerror or error}", file=sys.stderr)
            return 2
        return 141
    except ConnectionError as error:  # --address where no Ray cluster answers
        print(f"distcoagent {args.command}: error: {_line(error)}", file=sys.stderr)
        return 2
    except gym.error.Error as error:  # unknown env id: gymnasium's own message and suggestion
        print(f"distcoagent {args.command}: error: env.id: {_line(error)}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"distcoagent {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except MemoryError as error:  # what limits.check_memory did not foresee
        sizes = ("train.trials, train.envs_per_trial, train.episodes or the network's local states"
                 if args.command == "train" else "--trials or --episodes")
        print(f"distcoagent {args.command}: error: out of memory ({error or 'MemoryError'}); lower {sizes}",
              file=sys.stderr)
        return 2
    except OSError as error:  # a file or directory that cannot be read or written
        import errno

        name = str(error.filename) if error.filename else ""
        where = f"{name if len(name) <= 160 else name[:100] + '...' + name[-40:]}: " if name else ""
        full = ""
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            full = "; free some space" + (" (a run resumes from its last checkpoint: distcoagent train --resume "
                                          "RUN_DIR)" if args.command == "train" else "")
        print(f"distcoagent {args.command}: error: {where}{error.strerror or error}{full}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: one line, the traceback on request
        import os

        if os.environ.get("DISTCOAGENT_TRACEBACK"):
            raise
        message = " ".join(str(error).split())[:300]
        print(f"distcoagent {args.command}: internal error: {type(error).__name__}: {message} (a bug; rerun with "
              "DISTCOAGENT_TRACEBACK=1 for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
