"""``distcoagent evaluate RUN_DIR``: run a finished run's policies frozen, on fresh episodes."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="run a trained run's final policies with learning frozen, on fresh episodes",
        description="Load RUN_DIR's network, environment and final parameters (params.msgpack), freeze every "
                    "learning rule, and run each trial's policy for --episodes new episodes per environment on "
                    "a seed of its own (default: one past the run's). Prints the mean return with its standard "
                    "error over trials, and each trial's. Nothing in RUN_DIR changes.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (train writes params.msgpack)")
    p.add_argument("--episodes", type=int, default=100, help="episodes per environment (default 100)")
    p.add_argument("--seed", type=int, help="seed of the evaluation (default: the run's seed + 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    import numpy as np

    from ..checks import whole
    from ..evaluation import evaluate_run
    from ..network import SpecError

    try:
        whole(args.episodes, "--episodes", 1)
        if args.seed is not None:
            whole(args.seed, "--seed", 0)
    except ValueError as error:
        raise SpecError(str(error)) from None
    result = evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed)
    per_trial = result.returns.reshape(result.returns.shape[0], -1).mean(axis=1)
    trials, envs, episodes = result.returns.shape
    stderr = per_trial.std(ddof=1) / np.sqrt(trials) if trials > 1 else float("nan")
    print(f"evaluated {args.run_dir}: {trials} trial(s) x {envs} environment(s) x {episodes} episode(s), "
          f"learning frozen")
    print(f"mean return {per_trial.mean():.4f} (standard error over trials {stderr:.4f})")
    for t, value in enumerate(per_trial[:20]):
        print(f"  trial {t}: {value:.4f}")
    if trials > 20:
        print(f"  ... {trials - 20} more (min {per_trial.min():.4f}, max {per_trial.max():.4f})")
    if result.extra.get("note"):
        print(f"note: {result.extra['note']}", file=sys.stderr)
    return 0
