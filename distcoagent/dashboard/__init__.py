"""A live dashboard for a training run: a small read-only web server that follows
``RUN_DIR/metrics.jsonl`` and a page that draws it (network graph, execution rates, raster,
learning curve, per-coagent table, status).

``serve(run_dir)`` blocks (the ``distcoagent dashboard`` command); ``start_background(run_dir)``
returns a handle with ``url`` and ``stop()`` so training can go on in the calling thread.
"""
from .follow import CurveBlocks, RunFollower
from .raster import RasterWindow
from .server import DashboardError, DashboardHandle, check_run_dir, make_app, serve, start_background

__all__ = ["CurveBlocks", "DashboardError", "DashboardHandle", "RasterWindow", "RunFollower", "check_run_dir",
           "make_app", "serve", "start_background"]
