"""``distcoagent gradcheck SPEC``: estimate dJ/dtheta at frozen parameters two (or three) ways."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gradcheck", help="check the coagent policy gradient: ACPGT vs finite differences (vs exact)",
        description="Freeze the network's parameters (initial, or after --train-episodes of its own "
                    "learning rules) and estimate dJ/dtheta with the ACPGT estimator (only ticks at which "
                    "a coagent executed count, weighted by gamma_atomic^t G_t) and with central finite "
                    "differences of J on common random numbers. With --exact, also compute J and the "
                    "gradient exactly (tabular networks on environments with a transition model). Prints "
                    "per-coagent norms and cosine distances; --out writes everything as JSON.")
    p.add_argument("spec", help="path to a TOML spec file (see examples/)")
    p.add_argument("--episodes", type=int, default=1000, help="ACPGT episodes (default 1000)")
    p.add_argument("--fd-episodes", type=int, help="finite differences: episode pairs per parameter "
                                                   "(default: --episodes)")
    p.add_argument("--step", type=float, default=0.1, help="finite-difference step h (default 0.1)")
    p.add_argument("--no-fd", action="store_true", help="skip finite differences (they cost 2 runs per "
                                                        "parameter)")
    p.add_argument("--exact", action="store_true", help="also compute J and dJ/dtheta exactly")
    p.add_argument("--train-episodes", type=int, default=0,
                   help="train this many episodes with the spec's rules before freezing (trial 0; default 0)")
    p.add_argument("--seed", type=int, help="seed (default: the spec's train.seed)")
    p.add_argument("--out", help="write the report as JSON to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..gradients import NotExactError, gradcheck
    from ..spec import load_spec

    for flag in ("episodes", "fd_episodes", "train_episodes"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "train_episodes" else 1):
            print(f"distcoagent gradcheck: error: --{flag.replace('_', '-')}: expected a positive integer, "
                  f"got {value}", file=sys.stderr)
            return 2
    if not args.step > 0:
        print(f"distcoagent gradcheck: error: --step: expected h > 0, got {args.step}", file=sys.stderr)
        return 2
    spec = load_spec(args.spec)
    try:
        report = gradcheck(spec, episodes=args.episodes, fd_episodes=args.fd_episodes, step=args.step,
                           exact=args.exact, fd=not args.no_fd, seed=args.seed,
                           train_episodes=args.train_episodes)
    except NotExactError as error:
        print(f"distcoagent gradcheck: error: --exact: {error}", file=sys.stderr)
        return 2
    print(report.table())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=1))
        print(f"\nwrote {args.out}")
    return 0
