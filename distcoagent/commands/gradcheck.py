"""``distcoagent gradcheck SPEC``: estimate dJ/dtheta at frozen parameters two (or three) ways."""
from __future__ import annotations

import json
import os
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
    p.add_argument("--step", type=float, help="finite-difference step h (default 0.1)")
    p.add_argument("--no-fd", action="store_true", help="skip finite differences (they cost 2 runs per "
                                                        "parameter)")
    p.add_argument("--exact", action="store_true", help="also compute J and dJ/dtheta exactly")
    p.add_argument("--train-episodes", type=int, default=0,
                   help="train this many episodes with the spec's rules before freezing (trial 0; default 0)")
    p.add_argument("--seed", type=int, help="seed (default: the spec's train.seed)")
    p.add_argument("--out", help="write the report as JSON to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checks import writable_place
    from ..gradients import NotExactError, gradcheck
    from ..limits import check_memory
    from ..network import SpecError
    from ..spec import MAX_SEED, TrainConfig, integer, load_spec, number

    for flag, lowest in (("episodes", 1), ("fd_episodes", 1), ("train_episodes", 0)):
        if getattr(args, flag) is not None:
            integer(getattr(args, flag), f"--{flag.replace('_', '-')}", lowest)
    for flag, value in (("--fd-episodes", args.fd_episodes), ("--step", args.step)):
        if value is not None and args.no_fd:  # it would be silently ignored
            raise SpecError(f"{flag}: not with --no-fd (it sets the finite differences)")
    args.step = 0.1 if args.step is None else args.step
    number(args.step, "--step", 0, low_open=True)
    if args.seed is not None:
        integer(args.seed, "--seed", 0, MAX_SEED)
    if args.out is not None and not args.out.strip():
        raise SpecError("--out: expected a file for the JSON report, got an empty string")
    out = Path(args.out) if args.out else None
    if out is not None:  # before minutes of sampling, not after
        if out.is_dir():
            raise SpecError(f"--out: {out} is a directory; expected a file for the JSON report, "
                            f"e.g. {out / 'gradcheck.json'}")
        if out.exists() and not _is_report(out):  # the spec itself, or anyone's file: not ours to replace
            raise SpecError(f"--out: {out} exists and is not a gradcheck report; expected a new file (or an "
                            "earlier report, which is replaced)")
        if out.exists() and not os.access(out, os.W_OK):
            raise SpecError(f"--out: {out} is not writable")
        writable_place(out.parent, "--out")
    spec = load_spec(args.spec)
    seed = spec.train.seed if args.seed is None else args.seed
    check_memory(spec.network, spec.env_id, spec.env_kwargs,
                 TrainConfig(episodes=max(1, args.train_episodes), trials=1, seed=seed),
                 names={"train.trials x train.envs_per_trial x train.episodes": "--train-episodes",
                        "train.trials x train.envs_per_trial x ": ""})
    try:
        report = gradcheck(spec, episodes=args.episodes, fd_episodes=args.fd_episodes, step=args.step,
                           exact=args.exact, fd=not args.no_fd, seed=args.seed,
                           train_episodes=args.train_episodes)
    except NotExactError as error:
        raise SpecError(f"--exact: {error}") from None
    print(report.table())
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report.to_dict(), indent=1))
        except OSError as error:
            raise SpecError(f"--out: cannot write {out} ({error.strerror or error})") from None
        print(f"\nwrote {out}")
    return 0


def _is_report(path: Path) -> bool:
    """``path`` holds a report an earlier ``gradcheck --out`` wrote."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and {"settings", "gradients", "norms"} <= report.keys()
