"""``distcoagent dashboard RUN_DIR``: watch a run live in a browser."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dashboard", help="watch a run live in a browser (network, execution rates, raster, learning curve)",
        description="Serve a read-only page that follows RUN_DIR/metrics.jsonl while the run goes (and after "
                    "it ends): the network as a graph labelled with each coagent's execution rate, rates "
                    "over time, the execution raster of a few environments, the learning curve, per-coagent "
                    "counters, ticks per second, episodes done and the ETA. Open the printed address.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the one `distcoagent train` writes)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host: anyone who reaches it can read the run")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dashboard import DashboardError, serve
    from ..network import SpecError

    if not 0 <= args.port <= 65535:
        raise SpecError(f"--port: expected a port in 0-65535, got {args.port}")
    try:
        serve(args.run_dir, args.host, args.port, allow_remote=args.allow_remote)
    except DashboardError as error:
        raise SpecError(str(error)) from None
    return 0
