"""The command line: ``arroyo-metrics-buffer {demo,check,bench}`` (or ``python -m arroyo_metrics_buffer``).

Tooling only: the runtime (``import arroyo_metrics_buffer``) never imports this package. Each
subcommand's module is imported when it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from .._native import __version__

NEEDS_KAFKA = (
    "demo and bench need sentry-arroyo and confluent-kafka: pip install 'arroyo-metrics-buffer[kafka]'"
)


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
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

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
    bench.add_argument(
        "--consume", type=positive, default=50_000, help="messages per consumer round (default 50,000)"
    )
    bench.add_argument(
        "--memory-rounds",
        type=int,
        default=3,
        help="fresh interpreters per side for the window's memory (default 3; 0: no memory figures)",
    )
    bench.add_argument(
        "--memory-seconds",
        type=float,
        default=60.0,
        help="seconds of full-speed producing for the peak memory figure (default 60)",
    )
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import demo

            return demo(args.bootstrap_servers, args.messages, args.threads, args.json)
        if args.command == "check":
            from .check import check

            return check(args.imports, args.json)
        from .bench import bench

        return bench(
            args.rounds,
            args.calls,
            args.messages,
            args.consume,
            args.memory_rounds,
            args.memory_seconds,
            args.json,
        )
    except ImportError as e:
        print(f"error: {e} ({NEEDS_KAFKA})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the output piped into `head`, say: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
