"""Tail a run's ``metrics.jsonl`` incrementally and keep a small, downsampled picture of it.

The training writer appends one JSON record per line (start, metrics, curve, raster, end); a
line still being written is left for the next poll. Memory and the size of what a browser is
sent stay bounded however long the run: a ring of recent metrics records, a learning curve
averaged into at most ``curve_points`` blocks, and the last raster window, capped in rows.
Every change (a record read, config.json read) counts one ``seq``, and every part of the state
carries the ``seq`` at which it last changed, so a client that says ``since=seq`` is sent only
what is new.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import deque
from pathlib import Path

from .raster import RasterWindow

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
READ_CHUNK_BYTES = 16 << 20  # one poll reads at most this much; a huge file is caught up over several polls


def finite_or_text(value):
    """JSON for browsers has no NaN or Infinity: keep such floats visible as the strings "NaN", "Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: finite_or_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_text(item) for item in value]
    return value


def _number(value):
    """A finite float, or None for anything else (null, NaN, a string, an integer beyond any float)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) if math.isfinite(value) else None
        except OverflowError:
            return None
    return None


_SHAPES = {"start": {"network": dict, "raster": dict}, "metrics": {"coagents": dict, "clock": dict},
           "curve": {"episodes": list, "mean": list, "stderr": list, "n": list}, "end": {"summary": dict}}


def well_formed(record: dict) -> bool:
    """The parts of a record the dashboard reads have the types the writer gives them (``recording``); a
    hand-edited or foreign line that does not is skipped as unreadable, not read into the page."""
    for key, kind in _SHAPES.get(record.get("kind"), {}).items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            return False
    if record.get("kind") == "metrics":
        return all(isinstance(values, dict) for values in (record.get("coagents") or {}).values())
    if record.get("kind") == "start" and isinstance(record.get("network"), dict):
        coagents = record["network"].get("coagents")
        return isinstance(coagents, list) and all(isinstance(c, dict) for c in coagents)
    return True


class CurveBlocks:
    """The learning curve averaged over blocks of ``width`` consecutive episodes, ``width`` doubling
    whenever there would be more than ``max_points`` blocks (10,000 episodes -> 625 blocks of 16).

    A block's band is the mean of its episodes' standard errors: an upper bound on the standard
    error of the block's mean, whatever the correlation between episodes.

    >>> blocks = CurveBlocks(max_points=2)
    >>> for episode in (1, 2, 3):
    ...     blocks.add(episode, mean=float(episode), stderr=0.5, n=10)
    >>> blocks.to_dict()["episodes"], blocks.width
    ([1.5, 3.0], 2)
    """

    def __init__(self, max_points: int = 1000):
        self.max_points = max_points
        self.width = 1
        self.last_episode = 0
        self.blocks: list[list[float]] = []  # [episode_sum, episodes, mean_sum, stderr_sum, finite, min_n]

    def add(self, episode, mean, stderr, n) -> None:
        if not isinstance(episode, int) or episode <= self.last_episode:
            return  # a repeated or out-of-order episode: the curve only grows
        self.last_episode = episode
        mean, stderr = _number(mean), _number(stderr)
        finite = mean is not None
        entry = [episode, 1, mean if finite else 0.0, (stderr or 0.0) if finite else 0.0, int(finite),
                 n if isinstance(n, int) else 0]
        if self.blocks and self.blocks[-1][1] < self.width:
            self._merge(self.blocks[-1], entry)
        else:
            self.blocks.append(entry)
        if len(self.blocks) > self.max_points:
            self.width *= 2
            pairs = [self.blocks[i:i + 2] for i in range(0, len(self.blocks), 2)]
            self.blocks = [self._merge(pair[0], pair[1]) if len(pair) == 2 else pair[0] for pair in pairs]

    @staticmethod
    def _merge(into: list, other: list) -> list:
        into[5] = min(into[5], other[5])
        for i in range(5):
            into[i] += other[i]
        return into

    def to_dict(self) -> dict:
        episodes, means, stderrs, ns = [], [], [], []
        for episode_sum, count, mean_sum, stderr_sum, finite, min_n in self.blocks:
            episodes.append(episode_sum / count)
            means.append(mean_sum / finite if finite else None)
            stderrs.append(stderr_sum / finite if finite else None)
            ns.append(min_n)
        return {"episodes": episodes, "mean": means, "stderr": stderrs, "n": ns, "block_width": self.width,
                "last_episode": self.last_episode}


class RunFollower:
    """What ``RUN_DIR/metrics.jsonl`` says so far. Call ``poll()`` to read what was appended, then
    ``state(since)`` for the parts that changed after record ``since``."""

    PARTS = ("run", "metrics", "curve", "raster", "end")

    def __init__(self, run_dir, *, history_length: int = 300, curve_points: int = 1000,
                 raster_envs: int = 8, raster_coagents: int = 100, raster_ticks: int = 2000):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.history_length = history_length
        self._limits = dict(curve_points=curve_points, raster_envs=raster_envs,
                            raster_coagents=raster_coagents, raster_ticks=raster_ticks)
        self._reset(file_id=None)

    def _reset(self, file_id, offset: int = 0) -> None:
        self.epoch = uuid.uuid4().hex[:12]  # a client holding another epoch must start over
        self.file_id, self.offset, self.seq, self.bad_lines = file_id, offset, 0, 0
        self.cut_short_at = None  # the file's size when all that was left unread was a line without its end
        self.config: dict | None = None  # read again: a new run may have rewritten it
        self.start: dict | None = None
        self.latest: dict | None = None
        self.end: dict | None = None
        self.history: deque = deque(maxlen=self.history_length)
        self.curve = CurveBlocks(self._limits["curve_points"])
        self.raster = RasterWindow(envs=self._limits["raster_envs"], coagents=self._limits["raster_coagents"],
                                   ticks=self._limits["raster_ticks"])
        self.changed = dict.fromkeys(self.PARTS, 0)

    # -- reading ---------------------------------------------------------------------------------
    def poll(self) -> int:
        """Read the complete lines appended since the last poll; returns how many records were read."""
        try:
            stat = self.metrics_path.stat()
        except FileNotFoundError:
            stat = None
        file_id = (stat.st_dev, stat.st_ino) if stat else None
        if file_id != self.file_id or (stat and stat.st_size < self.offset):
            self._reset(file_id)  # a new, truncated or deleted file: a new run, or back to waiting
        if self.config is None:
            self._read_config()
        if stat is None or stat.st_size == self.offset:
            return 0
        with open(self.metrics_path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(min(stat.st_size - self.offset, READ_CHUNK_BYTES))
        complete = data.rfind(b"\n") + 1  # a trailing line without its newline is still being written
        at_end = self.offset + len(data) == stat.st_size
        self.cut_short_at = stat.st_size if at_end and complete < len(data) else None
        if complete == 0:
            if len(data) == READ_CHUNK_BYTES:
                self.offset += len(data)  # one absurd line longer than a chunk: skip it rather than stall
                self.bad_lines += 1
            return 0
        self.offset += complete
        records = 0
        for line in data[:complete].splitlines():
            if not line.strip():
                continue
            try:
                record = finite_or_text(json.loads(line))
                if not isinstance(record, dict):
                    continue
                if not well_formed(record):
                    raise ValueError("a field of another type than the writer's")
                self._ingest(record)
            except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
                self.bad_lines += 1
                continue
            records += 1
        return records

    def _read_config(self) -> None:
        try:
            config = json.loads((self.run_dir / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return  # absent or half written: try again at the next poll
        if isinstance(config, dict):
            self.config = finite_or_text(config)
            self.seq += 1
            self.changed["run"] = self.seq

    def _ingest(self, record: dict) -> None:
        kind = record.get("kind")
        if kind == "start":
            if self.start is not None:  # a second start in one file: a run restarted in place
                config = self.config
                self._reset(self.file_id, offset=self.offset)
                self.config = config
            self.seq += 1
            self.start = record
            window = record.get("raster", {}).get("window") if isinstance(record.get("raster"), dict) else None
            self.raster.set_window(window)
            self.changed["run"] = self.changed["raster"] = self.seq
            return
        self.seq += 1
        if kind == "metrics":
            entry = self._history_entry(self.seq, record)
            self.latest = record
            self.history.append(entry)
            self.changed["metrics"] = self.seq
        elif kind == "curve":
            columns = [record.get(key) or [] for key in ("episodes", "mean", "stderr", "n")]
            for episode, mean, stderr, n in zip(*columns):
                self.curve.add(episode, mean, stderr, n)
            self.changed["curve"] = self.seq
        elif kind == "raster":
            if self.raster.add(record):
                self.changed["raster"] = self.seq
        elif kind == "end":
            self.end = record
            self.changed["end"] = self.seq
        elif kind == "resume" and self.end is not None:  # running again: the interruption's end is over
            self.end = None
            self.changed["end"] = self.seq

    @staticmethod
    def _history_entry(seq: int, record: dict) -> tuple:
        rates = {}
        for name, values in (record.get("coagents") or {}).items():
            if isinstance(values, dict):
                recent = _number(values.get("recent_execution_rate"))
                rates[name] = (recent if recent is not None else _number(values.get("execution_rate")),
                               _number(values.get("executions_per_second")))
        return seq, _number(record.get("elapsed")), _number(record.get("ticks_per_second")), rates

    # -- answering -------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        if self.end is not None:
            return str(self.end.get("status") or "finished")
        return "running" if self.start is not None else "waiting"

    def state(self, since: int = 0, epoch: str | None = None) -> dict:
        """The parts changed after record ``since`` (everything if ``epoch`` is not this follower's)."""
        if epoch != self.epoch or since > self.seq:
            since = -1
        try:
            idle = max(0.0, time.time() - self.metrics_path.stat().st_mtime)
        except OSError:
            idle = None
        answer = {"epoch": self.epoch, "seq": self.seq, "full": since < 0, "status": self.status,
                  "error": self.end.get("error") if self.end else None, "idle_seconds": idle,
                  "bad_lines": self.bad_lines, "history_length": self.history_length,
                  "caught_up": self._caught_up()}
        if self.changed["run"] > since:
            answer["run"] = {"start": self.start, "config": self.config}
        if self.changed["metrics"] > since:
            answer["metrics"] = self.latest
            answer["history"] = self._history_since(since)
        if self.changed["curve"] > since:
            answer["curve"] = self.curve.to_dict()
        if self.changed["raster"] > since:
            answer["raster"] = self.raster.to_dict()
        if self.changed["end"] > since:
            answer["end"] = self.end
        return answer

    def _caught_up(self) -> bool:
        """Nothing left to read but, at most, a last line without its end that has not grown since (a record
        being written, or one cut short by a full disk or a killed process: no reason to poll fast)."""
        size = _size(self.metrics_path)
        return self.file_id is None or self.offset >= size or self.cut_short_at == size

    def _history_since(self, since: int) -> dict:
        entries = [entry for entry in self.history if entry[0] > since]
        names = list(self.latest.get("coagents") or {}) if self.latest else []
        return {
            "seq": [entry[0] for entry in entries],
            "elapsed": [entry[1] for entry in entries],
            "ticks_per_second": [entry[2] for entry in entries],
            "rate": {name: [entry[3].get(name, (None, None))[0] for entry in entries] for name in names},
            "per_second": {name: [entry[3].get(name, (None, None))[1] for entry in entries] for name in names},
        }


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
