"""The dashboard's follower and server: what the API says equals what metrics.jsonl says, bounded
state for a large run, refused paths and hosts, and the CLI's one-line errors."""
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from dashboard_fakes import FakeRun, large_network

from distcoagent.cli import main
from distcoagent.dashboard import CurveBlocks, DashboardError, RasterWindow, RunFollower, start_background


@pytest.fixture
def run(tmp_path):
    return FakeRun(tmp_path / "run", window=100, ticks_per_step_record=40)


@pytest.fixture
def server(run):
    with start_background(run.run_dir, port=0) as handle:
        yield handle


def get(handle, path, host=None):
    """A raw GET (http.client sends the path exactly as written, no normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
    connection.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def api_state(handle, since=0, epoch=""):
    status, _, body = get(handle, f"/api/state?since={since}&epoch={epoch}")
    assert status == 200
    return json.loads(body)


def test_state_says_what_the_file_says(run, server):
    assert api_state(server)["status"] == "waiting"
    run.start()
    for _ in range(6):
        run.step()
    state = api_state(server)
    assert state["status"] == "running" and state["run"]["start"]["network"] == run.network
    last = run.of_kind("metrics")[-1]
    assert state["metrics"]["tick"] == last["tick"] == 240
    for name in run.names:
        assert state["metrics"]["coagents"][name]["executions"] == last["coagents"][name]["executions"]
    assert state["history"]["rate"]["bit_a"] == [m["coagents"]["bit_a"]["recent_execution_rate"]
                                                 for m in run.of_kind("metrics")]
    episodes = [e for r in run.of_kind("curve") for e in r["episodes"]]
    means = [m for r in run.of_kind("curve") for m in r["mean"]]
    assert state["curve"]["episodes"] == episodes and state["curve"]["mean"] == means  # 12 episodes: no blocks
    rasters = {r["tick_start"]: r for r in run.of_kind("raster")}
    shown = state["raster"]["segments"]
    assert [s["tick_start"] for s in shown] == [160, 200]  # a 100-tick window holds the last two 40-tick records
    for segment in shown:
        assert segment["executed"] == rasters[segment["tick_start"]]["executed"]
    run.end("failed", error="FloatingPointError: coagent act: parameters are not finite")
    state = api_state(server, state["seq"], state["epoch"])
    assert state["status"] == "failed" and "not finite" in state["error"] and "metrics" not in state


def test_a_partial_trailing_line_waits_until_complete(run):
    follower = RunFollower(run.run_dir)
    run.start()
    run.step()
    follower.poll()
    seq, tick = follower.seq, follower.latest["tick"]
    rest = run.append_partial({**run.of_kind("metrics")[-1], "tick": tick + 40}, keep=0.6)
    assert follower.poll() == 0 and follower.seq == seq and follower.latest["tick"] == tick
    run.finish_partial(rest)
    assert follower.poll() == 1 and follower.latest["tick"] == tick + 40 and follower.bad_lines == 0


def test_a_last_line_cut_short_does_not_keep_the_page_polling_fast(run):
    """A full disk or a killed process leaves a line without its end: once the rest is read the page is
    caught up (it polls every second, not every 50 ms); a line that then grows is read again."""
    follower = RunFollower(run.run_dir)
    run.start()
    run.step()
    rest = run.append_partial({**run.of_kind("metrics")[-1], "tick": 10**6}, keep=0.5)
    follower.poll()
    assert follower.state(-1)["caught_up"] and follower.latest["tick"] != 10**6
    run.finish_partial(rest)
    assert not follower.state(-1)["caught_up"]
    assert follower.poll() == 1 and follower.latest["tick"] == 10**6 and follower.state(-1)["caught_up"]


def test_since_sends_only_what_changed(run):
    follower = RunFollower(run.run_dir)
    run.start()
    run.step()
    follower.poll()
    first = follower.state()
    assert first["full"] and {"run", "metrics", "history", "curve", "raster"} <= set(first)
    follower.poll()
    assert not {"run", "metrics", "curve", "raster", "end"} & set(follower.state(first["seq"], first["epoch"]))
    run.step(raster=False, curve=False)
    follower.poll()
    delta = follower.state(first["seq"], first["epoch"])
    assert set(delta) & {"metrics", "history", "curve", "raster"} == {"metrics", "history"}
    assert delta["history"]["seq"] == [delta["seq"]]
    assert follower.state(first["seq"], "another-epoch")["full"]  # a client from before a restart starts over


def test_a_new_file_starts_over(run):
    follower = RunFollower(run.run_dir)
    run.start()
    run.step()
    follower.poll()
    epoch = follower.epoch
    run.path.write_text("")
    run.start()
    follower.poll()
    assert follower.epoch != epoch and follower.latest is None and follower.status == "running"
    run.step()
    run.start()  # a run restarted in place, appending to the same file
    run.step()
    epoch = follower.epoch
    assert follower.poll() == 7 and follower.poll() == 0  # read once, from where it was: no loop
    assert follower.epoch != epoch and len(follower.history) == 1 and follower.latest["tick"] == 120
    assert follower.config["network"] == run.network


def test_large_run_is_downsampled(tmp_path):
    """100 coagents, 10,000 episodes, 16 sampled envs: the state a browser gets stays small."""
    big = FakeRun(tmp_path / "big", large_network(100), episodes=10_000, trials=5, envs_per_trial=4,
                  raster_envs=list(range(16)), window=600, ticks_per_step_record=1000, episode_ticks=20,
                  episodes_per_curve_record=100)
    big.start()
    for i in range(200):
        big.step(raster=i % 20 == 0)
    follower, began = RunFollower(big.run_dir), time.perf_counter()
    for _ in range(20):
        follower.poll()
        if follower.state()["caught_up"]:
            break
    state = follower.state()
    assert time.perf_counter() - began < 5 and state["caught_up"]
    curve = state["curve"]
    assert curve["last_episode"] == 10_000 and len(curve["episodes"]) <= 1000 and curve["block_width"] == 16
    means = [m for r in big.of_kind("curve") for m in r["mean"]]
    assert curve["mean"][0] == pytest.approx(sum(means[:16]) / 16) and curve["episodes"][0] == 8.5
    raster = state["raster"]
    assert raster["envs"] == list(range(8)) and len(raster["coagents"]) == 100
    assert [(s["tick_start"], s["ticks"]) for s in raster["segments"]] == [(180_400, 600)]  # newest 600 ticks
    assert len(state["history"]["seq"]) == 200 and len(state["metrics"]["coagents"]) == 100
    assert len(json.dumps(state)) < 2_000_000


def test_curve_blocks_average_and_double():
    blocks = CurveBlocks(max_points=4)
    for episode in range(1, 11):
        blocks.add(episode, float(episode), 1.0, 3)
    blocks.add(5, 99.0, 1.0, 3)  # a repeated episode changes nothing
    curve = blocks.to_dict()
    assert curve["block_width"] == 4 and curve["episodes"] == [2.5, 6.5, 9.5]
    assert curve["mean"] == [2.5, 6.5, 9.5] and curve["stderr"] == [1.0, 1.0, 1.0]


def test_raster_window_keeps_whole_segments_and_caps_rows():
    window = RasterWindow(envs=2, coagents=1, ticks=1000)
    window.set_window(6)
    record = {"tick_start": 0, "ticks": 3, "envs": [4, 5, 6],
              "executed": {"a": ["101", "011", "111"], "b": ["000"] * 3}}
    assert window.add(record) and window.add({**record, "tick_start": 3}) and window.add({**record, "tick_start": 9})
    shown = window.to_dict()
    assert shown["envs"] == [4, 5] and shown["coagents"] == ["a"]
    assert [s["tick_start"] for s in shown["segments"]] == [3, 9]
    assert shown["segments"][0]["executed"] == {"a": ["101", "011"]}
    assert not window.add({"tick_start": "x"})


def test_non_finite_and_unreadable_lines(run, server):
    run.start()
    run.step()
    record = run.of_kind("metrics")[-1]
    record["coagents"]["act"]["param_norm"] = float("inf")
    run.append(record)
    with open(run.path, "a") as handle:
        handle.write("{not json\n")
    state = api_state(server)  # the server writes strict JSON (allow_nan=False) or fails
    assert state["metrics"]["coagents"]["act"]["param_norm"] == "Infinity" and state["bad_lines"] == 1


def test_records_of_the_wrong_shape_are_skipped_and_the_rest_is_read(run, server):
    """Hand-edited or foreign lines whose fields have other types than the writer's: counted as unreadable,
    never a 500, never the records after them lost."""
    run.start()
    run.step()
    good = run.of_kind("metrics")[-1]
    for wrong in ({"kind": "metrics", "coagents": "oops", "tick": "x"}, {"kind": "metrics", "coagents": [1]},
                  {"kind": "metrics", "coagents": {"act": 3}}, {"kind": "curve", "episodes": 3, "mean": 1},
                  {"kind": "start", "network": {"coagents": "x"}}, {"kind": "end", "summary": [1]}):
        run.append(wrong)
    with open(run.path, "a") as handle:  # an integer no float can hold
        handle.write(json.dumps(dict(good, tick=good["tick"] + 1))[:-1] + ', "elapsed": 1' + "0" * 400 + "}\n")
    run.step()
    run.end("finished")
    state = api_state(server)
    assert state["bad_lines"] == 6 and state["status"] == "finished"
    assert state["metrics"]["tick"] == run.of_kind("metrics")[-1]["tick"]
    assert state["history"]["elapsed"][-2] is None  # the huge elapsed, read as no number


def test_page_static_files_and_headers(run, server):
    status, headers, body = get(server, "/")
    assert status == 200 and b'src="/static/app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path in ("/static/app.js", "/static/style.css", "/static/vendor/uPlot.iife.min.js",
                 "/static/vendor/uPlot.LICENSE"):
        assert get(server, path)[0] == 200, path
    status, _, body = get(server, "/api/config")
    assert status == 200 and json.loads(body)["network"] == run.network


@pytest.mark.parametrize("path", [
    "/static/../../config.json", "/static/%2e%2e/%2e%2e/config.json", "/static/..%2f..%2fconfig.json",
    "/static/%2e%2e%2fserver.py", "/static/../server.py", "/static/vendor/../../follow.py", "/static//etc/passwd",
    "/static/%2fetc%2fpasswd", "//etc/passwd", "/config.json", "/metrics.jsonl", "/static/", "/api/../config.json",
    "/static/C:%5cWindows%5cwin.ini", "/static/app.js%00.png"])
def test_paths_outside_the_static_table_are_refused(run, server, path):
    run.start()
    status, _, body = get(server, path)
    assert status in (400, 403, 404), (path, status)
    assert b"coagents" not in body and b"import" not in body


def test_a_foreign_host_header_is_refused(server):
    assert get(server, "/api/state", host="evil.example:8765")[0] == 403
    assert get(server, "/api/state", host=f"localhost:{server.port}")[0] == 200


def test_cli_errors_are_one_line(tmp_path, run, capsys):
    (tmp_path / "empty").mkdir()
    cases = [([str(tmp_path / "nowhere")], f"RUN_DIR: {tmp_path / 'nowhere'} does not exist"),
             ([str(tmp_path / "empty")], "is not a run directory (it has no config.json)"),
             ([str(run.run_dir.parent)], f"(it has no config.json); it holds 1 run(s), the last by name: "
                                         f"{run.run_dir}"),
             ([str(run.run_dir), "--host", "0.0.0.0"], "--host 0.0.0.0: not a loopback address"),
             ([str(run.run_dir), "--port", "70000"], "--port: expected a port in 0-65535, got 70000")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append(([str(run.run_dir), "--port", str(port)], f"port {port} is already in use; pass --port"))
        for argv, message in cases:
            assert main(["dashboard", *argv]) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("distcoagent dashboard: error: ") and message in err and err.count("\n") == 1, err


def test_allow_remote_binds_and_warns(run, capsys):
    with pytest.raises(DashboardError, match="--allow-remote"):
        start_background(run.run_dir, "0.0.0.0", 0)
    with start_background(run.run_dir, "0.0.0.0", 0, allow_remote=True) as handle:  # answered here on loopback
        assert get(handle, "/api/state")[0] == 200
    assert "warning: serving on 0.0.0.0, reachable from other machines" in capsys.readouterr().err


def test_the_command_serves_until_interrupted(run):
    run.start()
    run.step()
    proc = subprocess.Popen([sys.executable, "-m", "distcoagent.cli", "dashboard", str(run.run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "dashboard for RUN at http://127.0.0.1:PORT/ (Ctrl-C to stop)"
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/state", timeout=5) as response:
            assert json.loads(response.read())["metrics"]["tick"] == run.of_kind("metrics")[-1]["tick"]
        proc.send_signal(2)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_started_before_the_run_exists(tmp_path):
    """The training CLI may start the dashboard before train() writes config.json."""
    with start_background(tmp_path / "later", port=0, wait_for_run=True) as handle:
        state = api_state(handle)
        assert state["status"] == "waiting" and state["run"]["config"] is None
        run = FakeRun(tmp_path / "later")
        state = api_state(handle, state["seq"], state["epoch"])
        assert state["run"]["config"]["network"] == run.network
        run.start()
        run.step()
        assert api_state(handle, state["seq"], state["epoch"])["metrics"]["tick"] == run.tick == 50


def test_a_resumed_run_reads_as_running_and_its_figures_keep_their_target(tmp_path):
    """An interrupted run resumed on the same metrics.jsonl is running again (not "interrupted") until its
    own end; every metrics record, the last one too, carries the episodes to reach."""
    from pathlib import Path

    from distcoagent import load_spec, train

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml",
                     {"trials": 4, "episodes": 300})
    out = tmp_path / "run"
    calls = iter(range(10**9))
    assert not train(spec, out=out, stop=lambda: next(calls) >= 3, metrics_every=0.0).finished
    log = out / "metrics.jsonl"
    interrupted = len(log.read_bytes())
    follower = RunFollower(out)
    while follower.poll():
        pass
    assert follower.status == "interrupted"
    train(spec, out=out, resume=True, metrics_every=0.0)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records].count("start") == 1
    metrics = [r for r in records if r["kind"] == "metrics"]
    assert len(metrics) >= 2 and all(r["episodes_total"] == 300 for r in metrics)
    written = log.read_bytes()
    seen = tmp_path / "seen"  # the file as a dashboard saw it just after the resume record
    seen.mkdir()
    (seen / "config.json").write_bytes((out / "config.json").read_bytes())
    (seen / "metrics.jsonl").write_bytes(written[:written.index(b"\n", written.index(b'"resume"', interrupted)) + 1])
    early = RunFollower(seen)
    while early.poll():
        pass
    assert early.status == "running" and early.state(-1)["end"] is None
    while follower.poll():
        pass
    assert follower.status == "finished"


def test_a_run_of_one_metrics_record_has_its_rates(tmp_path):
    """A run of a few seconds writes one metrics record (at its end): its rates are since the start, not
    missing (the page drew an empty rate chart and "-/s")."""
    from pathlib import Path

    from distcoagent import load_spec, train

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "paper_gridworld.toml",
                     {"trials": 2, "episodes": 3})
    train(spec, out=tmp_path / "run", metrics_every=1e9)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (only,) = [r for r in records if r["kind"] == "metrics"]
    for name, c in only["coagents"].items():
        assert c["recent_execution_rate"] == c["execution_rate"] > 0, name
        assert c["executions_per_second"] == pytest.approx(c["executions"] / only["elapsed"]), name
