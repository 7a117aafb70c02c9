"""The dashboard's HTTP server: the page, its static assets, and one run directory's live state.

Read-only and narrow on purpose: ``/`` is the page, ``/static/<file>`` serves only the files
shipped in the package's ``static/`` folder (looked up by name in a fixed table, so no path
from a request ever reaches the file system), ``/api/state?since=&epoch=`` and ``/api/config``
are the run's data. Bound to loopback by default; it also refuses requests whose Host header
names another machine, so a web page elsewhere cannot read the run through DNS rebinding.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import sys
import threading
from pathlib import Path

from aiohttp import web

from .follow import CONFIG_FILE, METRICS_FILE, RunFollower

STATIC_DIR = Path(__file__).parent / "static"
FOLLOWER = web.AppKey("follower", RunFollower)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class DashboardError(ValueError):
    """The dashboard cannot start; the message is one line naming what is wrong."""


def check_run_dir(run_dir) -> Path:
    """The run directory, or a DashboardError saying why it is not one."""
    path = Path(run_dir)
    if not path.exists():
        raise DashboardError(f"RUN_DIR: {run_dir} does not exist")
    if not path.is_dir():
        raise DashboardError(f"RUN_DIR: {run_dir} is not a directory")
    if not (path / CONFIG_FILE).is_file():
        runs = sorted((child for child in path.iterdir() if (child / CONFIG_FILE).is_file()),
                      key=lambda child: child.name)
        hint = f"; it holds {len(runs)} run(s), the last by name: {runs[-1]}" if runs else ""
        raise DashboardError(f"RUN_DIR: {run_dir} is not a run directory (it has no {CONFIG_FILE}){hint}")
    metrics = path / METRICS_FILE
    if metrics.exists() and not metrics.is_file():
        raise DashboardError(f"RUN_DIR: {metrics} is not a file (the run's metrics go there)")
    return path


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless allowed; when allowed, warn on stderr."""
    if not host.strip():  # '' would bind every interface
        raise DashboardError("--host: expected a host name or address, got ''")
    if is_loopback(host):
        return
    if not allow_remote:
        raise DashboardError(f"--host {host}: not a loopback address; the dashboard has no authentication, "
                             "so serving it to other machines needs --allow-remote")
    print(f"distcoagent dashboard: warning: serving on {host}, reachable from other machines; anyone who can "
          "reach it can read this run (there is no authentication)", file=sys.stderr, flush=True)


def make_app(run_dir, *, allow_remote: bool = False, **follower_options) -> web.Application:
    """The aiohttp application for one run directory (``follower_options`` go to RunFollower)."""
    follower = RunFollower(run_dir, **follower_options)
    static_files = {path.relative_to(STATIC_DIR).as_posix(): path
                    for path in STATIC_DIR.rglob("*") if path.is_file()}

    @web.middleware
    async def guard(request: web.Request, handler):
        if not allow_remote and not is_loopback(request.url.host or ""):
            raise web.HTTPForbidden(text="this dashboard answers only requests addressed to localhost")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def page(request):
        return web.FileResponse(STATIC_DIR / "index.html")

    async def static(request):
        path = static_files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def state(request):
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since: expected an integer")
        follower.poll()
        return json_response(follower.state(since, request.query.get("epoch")))

    async def config(request):
        follower.poll()
        return json_response(follower.config)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", page)
    app.router.add_get("/static/{name:.+}", static)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/config", config)
    app[FOLLOWER] = follower
    return app


def json_response(payload) -> web.Response:
    return web.Response(text=json.dumps(payload, separators=(",", ":"), allow_nan=False),
                        content_type="application/json")


class DashboardHandle:
    """A dashboard serving from a background thread: ``url``, and ``stop()`` to shut it down."""

    def __init__(self, url: str, port: int, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.url, self.port, self._loop, self._thread = url, port, loop, thread

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_background(run_dir, host: str = "127.0.0.1", port: int = 8765, *, allow_remote: bool = False,
                     wait_for_run: bool = False) -> DashboardHandle:
    """Serve RUN_DIR's dashboard from a daemon thread (training goes on in the caller's thread).

    Raises DashboardError for a bad run directory, a refused host, or a port already in use.
    ``port=0`` picks a free port; ``handle.url`` says which. ``wait_for_run=True`` accepts a
    RUN_DIR that training has not created yet (the page says "waiting for data" until it has).
    """
    run_dir = Path(run_dir) if wait_for_run else check_run_dir(run_dir)
    check_host(host, allow_remote)
    app = make_app(run_dir, allow_remote=allow_remote)
    loop = asyncio.new_event_loop()
    started, outcome = threading.Event(), {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        loop.run_until_complete(runner.setup())
        try:
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
            outcome["port"] = runner.addresses[0][1]
        except (OSError, socket.gaierror) as error:
            outcome["error"] = bind_error(error, host, port)
        started.set()
        if "port" in outcome:
            loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="distcoagent-dashboard", daemon=True)
    thread.start()
    if not started.wait(timeout=30):
        raise DashboardError(f"the dashboard did not start on {host}:{port} within 30 s")
    if "error" in outcome:
        thread.join(5)
        raise outcome["error"]
    shown_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    return DashboardHandle(f"http://{shown_host}:{outcome['port']}/", outcome["port"], loop, thread)


def bind_error(error: OSError, host: str, port: int) -> DashboardError:
    """One line for each way binding fails."""
    if error.errno == errno.EADDRINUSE:
        return DashboardError(f"port {port} is already in use; pass --port")
    if error.errno == errno.EACCES:
        return DashboardError(f"--port {port}: permission denied (ports below 1024 need root)")
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return DashboardError(f"--host {host}: not an address of this machine ({error.strerror or error})")
    return DashboardError(f"cannot serve on {host}:{port}: {error.strerror or error}")


def serve(run_dir, host: str = "127.0.0.1", port: int = 8765, *, allow_remote: bool = False) -> None:
    """Serve RUN_DIR's dashboard until Ctrl-C; prints the address to open."""
    handle = start_background(run_dir, host, port, allow_remote=allow_remote)
    try:  # the address is printed inside the try: a Ctrl-C right after it still stops cleanly
        print(f"dashboard for {run_dir} at {handle.url} (Ctrl-C to stop)", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
