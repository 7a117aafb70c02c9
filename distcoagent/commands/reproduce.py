"""``distcoagent reproduce fig5|fig6|option-critic``: the paper's experiments (SPEC §4, §5), as PNG and JSON."""
from __future__ import annotations

import argparse
import math
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="reproduce the paper's Figure 5 (gradient check), Figure 6 (learning curve) or "
                          "its option-critic case study on Four Rooms",
        description="fig5: train the paper's network 5 episodes (actor-critic(lambda), shared critic), "
                    "freeze it, estimate dJ/dtheta by ACPGT and by finite differences from growing data, "
                    "and plot their mean cosine distance (95% band over trials) against episodes, and "
                    "(unless --no-exact) each estimator's distance to the exact gradient; by default the "
                    "full study, 100 trials of up to 30,000 episodes per estimate (about 2 minutes on 2 "
                    "cores). "
                    "fig6: mean episodic return per episode over trials (95% band) with the optimal "
                    "return. Writes DIR/figN.png and DIR/figN.json. option-critic: steps to goal per "
                    "episode (mean over runs, 95% band) of the coagent option-critic, the classic one and a "
                    "flat actor-critic on Four Rooms, the goal moving halfway; option durations; the options "
                    "on the map. Writes DIR/option_critic*.png and DIR/option_critic.json.")
    p.add_argument("figure", choices=["fig5", "fig6", "option-critic"])
    p.add_argument("--trials", type=int, help="independent trials (default: fig5 100, fig6 10000, "
                                              "option-critic 20 runs per agent)")
    p.add_argument("--episodes", type=int, help="fig5: most episodes per estimate (default 30000); "
                                                "fig6: episodes per trial (default 200); option-critic: "
                                                "episodes per run (default 2000, the goal moves halfway)")
    p.add_argument("--out", default="figures", help="output directory (default: figures)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--step", type=float, help="fig5: finite-difference step h (default 0.1)")
    p.add_argument("--exact", action=argparse.BooleanOptionalAction,
                   help="fig5: also plot each estimator's cosine distance to the exact gradient of the "
                        "time-limited episodes (default: on; --no-exact: only ACPGT vs finite differences)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count, at most 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import reproduce
    from ..checks import INT64_MAX
    from ..network import SpecError

    for flag in ("trials", "episodes", "workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"distcoagent reproduce: error: --{flag}: expected a positive integer, got {value}",
                  file=sys.stderr)
            return 2
    if not 0 <= args.seed <= INT64_MAX:
        print(f"distcoagent reproduce: error: --seed: expected an integer in 0..2**63 - 1, got {args.seed}",
              file=sys.stderr)
        return 2
    for flag, value in (("--step", args.step), ("--exact" if args.exact else "--no-exact", args.exact)):
        if value is not None and args.figure != "fig5":  # they would be silently ignored
            print(f"distcoagent reproduce: error: {flag}: only for fig5 (the gradient check)", file=sys.stderr)
            return 2
    args.step = 0.1 if args.step is None else args.step
    args.exact = True if args.exact is None else args.exact
    try:
        reproduce.check_out(args.out)  # found before the study runs, not after
    except SpecError as error:
        print(f"distcoagent reproduce: error: --{error}", file=sys.stderr)
        return 2
    if args.figure == "option-critic":
        from ..reproduce_option_critic import report

        return report(args)
    if args.figure == "fig5":
        if not (args.step > 0 and math.isfinite(args.step)):
            print(f"distcoagent reproduce: error: --step: expected a positive finite-difference step, got "
                  f"{args.step}", file=sys.stderr)
            return 2
        summary = reproduce.fig5(trials=args.trials or reproduce.FULL_TRIALS,
                                 episodes=args.episodes or reproduce.FULL_EPISODES, seed=args.seed, out=args.out,
                                 step=args.step, workers=args.workers, exact=args.exact)
        print(f"fig5: {summary['trials']} trials, up to {summary['max_episodes']} episodes per estimate, "
              f"{summary['seconds']:.1f} s; mean cosine distance (95% half-width) by episodes per estimate")
        lines = summary["lines"]
        print(f"  {'episodes':>8}" + "".join(f"  {lines[k]['label']:>28}" for k in lines))
        for i, n in enumerate(summary["episodes"]):
            print(f"  {n:>8}" + "".join(f"  {lines[k]['mean'][i]:>17.4f} +- {lines[k]['ci95_halfwidth'][i]:<7.4f}"
                                         for k in lines))
        for k, line in lines.items():
            end = line["end"]
            print(f"  ends: {line['label']}: {end['mean']:.4f} +- {end['ci95_halfwidth']:.4f} (median "
                  f"{end['median']:.4f}) at {end['episodes']} episodes")
    else:
        summary = reproduce.fig6(trials=args.trials or 10_000, episodes=args.episodes or 200, seed=args.seed,
                                 out=args.out, workers=args.workers)
        print(f"fig6: {summary['trials']} trials x {summary['episodes']} episodes in {summary['seconds']:.1f} s; "
              f"mean return: episode 1 {summary['first_episode_mean']:.2f}, last {min(10, summary['episodes'])} "
              f"{summary['final_mean_last10']:.2f}; optimal {summary['optimal_return']:g}")
    print(f"wrote {args.out}/{args.figure}.png and {args.out}/{args.figure}.json")
    return 0
