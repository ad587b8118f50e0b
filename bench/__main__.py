"""Benchmarks runner: `python -m bench [webpush-cpu] [--deliveries N]`."""

from __future__ import annotations

import argparse

from bench import webpush_cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmark", nargs="?", default="webpush-cpu", choices=["webpush-cpu"])
    parser.add_argument("--deliveries", type=int, default=500, help="pushes per measured loop (default 500)")
    args = parser.parse_args(argv)
    if args.benchmark == "webpush-cpu":
        webpush_cpu.run(args.deliveries)


if __name__ == "__main__":
    main()
