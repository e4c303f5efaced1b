"""``python -m bench [--part 1|2] [--quick]``: print figures and ratios against baselines."""

from __future__ import annotations

import argparse
import os
import platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 24-hour backlog")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; medians of repeated runs"
    )
    if args.part in ("1", "all"):
        from bench import collector_bench

        results = collector_bench.run(polls=20 if args.quick else 60)
        print("\n".join(collector_bench.report(results)), flush=True)
    if args.part in ("2", "all"):
        from bench import rollup_bench

        results = rollup_bench.run(runs=3, backlog=not args.quick)
        print("\n".join(rollup_bench.report(results)), flush=True)


if __name__ == "__main__":
    main()
