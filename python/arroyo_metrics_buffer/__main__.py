"""python -m arroyo_metrics_buffer {demo,check,bench}"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def host_port(text: str) -> str:
    if not re.fullmatch(r"[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*", text):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arroyo-metrics-buffer",
        description="A thread-safe native metrics buffer for arroyo: show the race, check, measure.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,check,bench}")

    demo = sub.add_parser("demo", help="show the race with stock arroyo and the exact result with the patch")
    demo.add_argument("--messages", type=positive, default=100_000, help="messages per run (default 100,000)")
    demo.add_argument(
        "--threads",
        type=positive,
        default=8,
        help="producing/polling threads, and as many flushing threads (default 8)",
    )
    demo.add_argument(
        "--bootstrap-servers", type=host_port, help="a real Kafka cluster instead of the mock one"
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check", help="what is patched in this environment")
    check.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (e.g. your start-up module), then report; repeatable",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")

    bench = sub.add_parser("bench", help="per-call and end-to-end cost, stock vs patched, in one process")
    bench.add_argument("--rounds", type=positive, default=9, help="alternating rounds per figure (default 9)")
    bench.add_argument("--calls", type=positive, default=200_000, help="calls per round (default 200,000)")
    bench.add_argument("--messages", type=positive, default=200_000, help="messages per end-to-end round")
    bench.add_argument("--json", action="store_true", help="machine-readable output")

    scenario = sub.add_parser("_scenario")  # one demo run, in its own process
    scenario.add_argument("--bootstrap-servers", required=True)
    scenario.add_argument("--messages", type=positive, required=True)
    scenario.add_argument("--threads", type=positive, required=True)
    scenario.add_argument("--patched", action="store_true")
    scenario.add_argument("--mock", action="store_true")
    scenario.add_argument("--parent", type=int, required=True, help="the demo's pid: exit when it is gone")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import demo

            return demo(args.bootstrap_servers, args.messages, args.threads, args.json)
        if args.command == "check":
            from ._check import check

            return check(args.imports, args.json)
        if args.command == "bench":
            from ._bench import bench

            return bench(args.rounds, args.calls, args.messages, args.json)
        from ._demo import SCENARIO_SECONDS, scenario, watchdog

        watchdog(args.parent, SCENARIO_SECONDS)

        print(
            json.dumps(scenario(args.bootstrap_servers, args.messages, args.threads, args.patched, args.mock))
        )
        return 0
    except ImportError as e:
        print(
            f"error: {e} (the demo, check and bench commands need sentry-arroyo and confluent-kafka)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
