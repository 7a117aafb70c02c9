"""The most recent execution raster: which coagent executed at which tick, in a few sampled environments.

Raster records arrive as consecutive (possibly gapped) segments; the window keeps whole
segments, newest last, until they add up to the run's ``raster.window`` ticks. Rows are capped
(``envs`` x ``coagents``) and so are columns (``ticks``), so a browser draws at most that many
cells whatever the network's size.
"""
from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_TICKS = 500


class RasterWindow:
    """Whole raster segments covering at most ``window`` ticks (and ``ticks`` columns at most)."""

    def __init__(self, *, envs: int = 8, coagents: int = 100, ticks: int = 2000):
        self.max_envs, self.max_coagents, self.max_ticks = envs, coagents, ticks
        self.window = min(DEFAULT_WINDOW_TICKS, ticks)
        self.envs: list = []
        self.coagents: list[str] = []
        self.segments: deque[dict] = deque()

    def set_window(self, window) -> None:
        """The start record's ``raster.window``: how many ticks the writer means a window to hold."""
        if isinstance(window, int) and window > 0:
            self.window = min(window, self.max_ticks)

    def add(self, record: dict) -> bool:
        """Append one raster record; returns False (and keeps nothing) if it is malformed."""
        tick_start, ticks, executed = record.get("tick_start"), record.get("ticks"), record.get("executed")
        envs = record.get("envs")
        if not (isinstance(tick_start, int) and isinstance(ticks, int) and ticks > 0
                and isinstance(executed, dict) and isinstance(envs, list)):
            return False
        envs = envs[:self.max_envs]
        names = [name for name, rows in executed.items() if isinstance(rows, list)][:self.max_coagents]
        skip = max(0, ticks - self.window)  # a segment longer than the window keeps its newest ticks
        rows = {name: [self._row(row, skip, ticks) for row in executed[name][:len(envs)]] for name in names}
        if envs != self.envs or names != self.coagents:
            self.segments.clear()  # other rows than before: the old segments cannot be drawn beside it
            self.envs, self.coagents = envs, names
        self.segments.append({"tick_start": tick_start + skip, "ticks": ticks - skip, "executed": rows})
        total = sum(segment["ticks"] for segment in self.segments)
        while total > self.window and len(self.segments) > 1:
            total -= self.segments.popleft()["ticks"]
        return True

    @staticmethod
    def _row(row, skip: int, ticks: int) -> str:
        row = row if isinstance(row, str) else ""
        return row[skip:ticks].ljust(ticks - skip, "0")

    def to_dict(self) -> dict:
        return {"envs": self.envs, "coagents": self.coagents, "window": self.window,
                "segments": list(self.segments)}
