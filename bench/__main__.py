"""Benchmarks runner: `python -m bench {pipeline,standins,webpush-cpu} [options]`.

* ``pipeline`` (the default): the whole service end to end on loopback — gunicorn,
  a Celery worker, PostgreSQL, Redis and the vendor stand-ins in their own
  processes — next to a plain pywebpush loop; prints a Markdown table and
  writes ``bench/results/latest.json``. ``--quick`` scales it down (< 2 min).
* ``standins``: what each vendor stand-in can take on its own, so the pipeline
  figures can be checked not to be the stand-ins' limits.
* ``capacity``: the capacity model of docs/scaling.md computed from a pipeline run's results.
* ``webpush-cpu``: pushq's Web Push adapter against a plain pywebpush loop,
  in-process (no Celery, no database).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    """Parse the sub-command and run it; imports each benchmark only when chosen (they pull heavy modules)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark")

    pipeline = sub.add_parser("pipeline", help="end-to-end pipeline benchmark (default)")
    pipeline.add_argument("--quick", action="store_true", help="scaled-down counts, finishes in under 2 minutes")
    pipeline.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json", help="JSON results file")
    pipeline.add_argument("--storage-only", action="store_true",
                          help="only the database's cost per delivery (bulk and single sends) and retention")
    pipeline.add_argument("--keep-logs", action="store_true",
                          help="keep every process's log in bench/results/run/ (default: only on failure)")

    standins = sub.add_parser("standins", help="capacity of each vendor stand-in alone")
    standins.add_argument("--pushes", type=int, default=3000, help="pushes per measurement (default 3000)")
    standins.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    standins.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")

    webpush_cpu = sub.add_parser("webpush-cpu", help="Web Push adapter CPU vs a plain pywebpush loop")
    webpush_cpu.add_argument("--deliveries", type=int, default=500, help="pushes per measured loop (default 500)")

    capacity = sub.add_parser("capacity", help="the capacity model (docs/scaling.md) from a pipeline run's results")
    capacity.add_argument("results", type=Path, nargs="?", default=RESULTS_DIR / "latest.json",
                          help="results JSON of `make bench` (default bench/results/latest.json)")

    # Bare `python -m bench [--quick]` runs the pipeline benchmark.
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "pipeline")
    args = parser.parse_args(args_list)

    from bench.procs import BenchError

    try:
        if args.benchmark == "pipeline":
            from bench import pipeline as pipeline_bench

            pipeline_bench.run(quick=args.quick, output=args.output, keep_logs=args.keep_logs,
                               storage_only=args.storage_only)
        elif args.benchmark == "standins":
            from bench import standin_capacity

            standin_capacity.run(args.pushes, args.connections, args.output)
        elif args.benchmark == "capacity":
            from bench import capacity as capacity_model

            capacity_model.run(args.results)
        elif args.benchmark == "webpush-cpu":
            from bench import webpush_cpu

            webpush_cpu.run(args.deliveries)
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every started process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
