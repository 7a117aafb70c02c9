"""The ``distcoagent`` command line: train, validate, and the commands in ``commands/``."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import gymnasium as gym

from .network import SpecError
from .spec import ENGINES, check_env, load_spec


def _train(args) -> int:
    from tqdm import tqdm

    from .training import summarize, train

    overrides = {"episodes": args.episodes, "trials": args.trials, "seed": args.seed, "engine": args.engine,
                 "envs_per_trial": args.envs_per_trial, "micro_batches": args.micro_batches,
                 "address": args.address}
    spec = load_spec(args.spec, overrides, {"coagents_per_actor": args.coagents_per_actor,
                                            "placement": args.placement, "transport": args.transport})
    check_env(spec).close()
    out = Path(args.out) if args.out else Path("runs") / Path(args.spec).stem
    bar = tqdm(total=spec.train.episodes, unit="episode", disable=args.quiet or None,
               desc=f"{spec.train.trials} trial(s), {spec.train.engine}")
    try:
        result = train(spec, out=out, progress=bar.update)
    finally:
        bar.close()
    summary = summarize(result, spec.env_id, spec.env_kwargs)
    width = max(len(k) for k in summary)
    print(f"run directory: {out}")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    for name, counters in result.counters.items():
        print(f"  coagent {name}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    return 0


def _validate(args) -> int:
    spec = load_spec(args.spec)
    env = check_env(spec)
    env.close()
    net = spec.network
    print(f"{args.spec}: valid. {len(net.coagents)} coagent(s) in tick order {' -> '.join(net.order)}; "
          f"action {net.action}; env {spec.env_id} ({env.observation_space} -> {env.action_space}); "
          f"gamma {net.gamma}, {net.ticks_per_step} atomic tick(s) per step")
    if args.json:
        print(json.dumps(net.to_config(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distcoagent",
        description="Build, train, gradient-check and distribute asynchronous coagent networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a network from a spec file; writes a run directory",
                       description="Train the network of SPEC on its environment. Flags override the "
                                   "spec's [train] table. Writes returns.csv, curve.csv, counters.json, "
                                   "config.json, params.msgpack, summary.json and learning_curve.png.")
    p.add_argument("spec", help="path to a TOML spec file (see examples/)")
    p.add_argument("--episodes", type=int, help="episodes per environment (spec: train.episodes)")
    p.add_argument("--trials", type=int, help="independent learners run side by side, each with its own "
                                              "parameters (spec: train.trials)")
    p.add_argument("--envs-per-trial", type=int, help="environments sharing one trial's parameters")
    p.add_argument("--seed", type=int, help="the run's seed; it determines everything (spec: train.seed)")
    p.add_argument("--out", help="run directory (default: runs/<spec name>)")
    p.add_argument("--engine", choices=ENGINES, help="inprocess (default): numpy in this process; "
                                                     "ray: one Ray actor per coagent")
    p.add_argument("--address", help="with --engine ray: join a running cluster ('auto' or HOST:PORT) "
                                      "instead of starting a local Ray")
    p.add_argument("--micro-batches", type=int, help="split trials into this many micro-batches "
                                                      "(pipelined on Ray; results do not change)")
    p.add_argument("--coagents-per-actor", type=int, help="with --engine ray: pack this many coagents into "
                                                          "one actor (default 1; spec: ray.coagents_per_actor)")
    p.add_argument("--placement", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="with --engine ray: put all actors in a placement group with this strategy")
    p.add_argument("--transport", choices=["compiled", "actors"],
                   help="with --engine ray: Ray Compiled Graph (default) or plain actor calls")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("validate", help="check a spec (and its environment) without running it",
                       description="Parse SPEC, check every field, build the environment once and check "
                                   "the network against its observation and action spaces.")
    p.add_argument("spec", help="path to a TOML spec file")
    p.add_argument("--json", action="store_true", help="also print the resolved network as JSON")
    p.set_defaults(func=_validate)

    from .commands import COMMANDS

    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as error:
        print(f"distcoagent {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ConnectionError as error:  # --address where no Ray cluster answers
        print(f"distcoagent {args.command}: error: {error}", file=sys.stderr)
        return 2
    except gym.error.Error as error:  # unknown env id: gymnasium's own message and suggestion
        print(f"distcoagent {args.command}: error: env.id: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"distcoagent {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
