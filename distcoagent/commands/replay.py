"""``distcoagent replay RUN_DIR``: check a free-running run against its execution record."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a free-running run's recorded executions in-process and compare",
        description="Run the in-process engine over RUN_DIR's trials, seed and micro-batches with the "
                    "executions recorded in RUN_DIR/executions.msgpack forced (train --clock free writes "
                    "it), and compare: every parameter must equal RUN_DIR/params.msgpack bit for bit, and "
                    "every recorded output of the sampled environments must be what the replay computes. "
                    "Exit 0 when identical, 1 otherwise, 2 if RUN_DIR cannot be read (a missing or damaged "
                    "file, named).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished free-running run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..replay import replay

    report = replay(args.run_dir)
    print(f"replayed {report.steps} recorded step(s); {report.outputs_checked} recorded output(s) checked")
    for name, count in report.executions.items():
        print(f"  coagent {name}: {count} execution(s)")
    if report.identical:
        print("identical: every parameter and every recorded output agrees, bit for bit")
        return 0
    for key, diff in report.parameter_differences.items():
        print(f"  parameter {key} differs (max |difference| {diff:.3g})")
    for m in report.output_mismatches:
        print(f"  output of {m['coagent']} at tick {m['tick']}, environment {m['env']}: recorded {m['recorded']}, "
              f"replayed {m['replayed']}")
    return 1
