"""The command line, run as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import arroyo_metrics_buffer
from arroyo_metrics_buffer import install, installed
from arroyo_metrics_buffer.cli.demo import render
from arroyo_metrics_buffer.cli.demo_result import (
    ForwardReport,
    KafkaReport,
    PoolReport,
    RunFailure,
    RunResult,
    StreamReport,
    split,
)
from arroyo_metrics_buffer.cli.progress import Progress
from helpers import MOCK_CLUSTER, TARGETS, needs_kafka, producer_has_latency


def cli(*args: str, timeout: float = 240, switch: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROYO_METRICS_BUFFER"}
    if switch is not None:
        env["ARROYO_METRICS_BUFFER"] = switch
    return subprocess.run(
        [sys.executable, "-m", "arroyo_metrics_buffer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@needs_kafka
def test_demo_shows_an_exact_patched_run() -> None:
    done = cli("demo", "--messages", "3000", "--threads", "4", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    stock, patched = result["runs"]
    assert result["patched_run_exact"] is True
    assert stock["patched"] == []
    assert patched["patched"] == TARGETS
    assert patched["exceptions"] == {}
    pool = patched["producers"]["demo-pool"]
    kafka = [patched["producers"][name] for name in ("demo-kafka-1", "demo-kafka-2")]
    assert pool["produced"] + sum(k["produced"] for k in kafka) == 3000
    assert all(k["produced"] > 0 for k in kafka)
    assert pool["callbacks_never_ran"] == 0
    assert pool["produce_status_emitted"] == pool["delivered"]
    assert sum(pool["delivered"].values()) == pool["produced"]
    for k in kafka:
        assert k["futures"]["unresolved"] == 0
        assert k["futures"]["success"] + k["futures"]["error"] == k["produced"]
        if k["produce_status_emitted"]["success"] is not None:  # arroyo 2.40.3+
            assert k["produce_status_emitted"] == {
                "success": k["futures"]["success"],
                "error": k["futures"]["error"],
            }
    delivered = pool["delivered"]["success"] + sum(k["futures"]["success"] for k in kafka)
    assert patched["stream_processor"]["consumed"] == patched["stream_processor"]["expected"] == delivered
    forwarded = patched["producers"]["demo-forward"]["produce_status_emitted"]["success"]
    assert forwarded in (delivered, None)
    assert stock["producers"]["demo-pool"]["produced"] == pool["produced"]


@needs_kafka
def test_demo_table() -> None:
    done = cli("demo", "--messages", "2000", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "mock cluster at 127.0.0.1:" in done.stderr
    # The header's split of the messages is what each run's progress counts up to.
    [(messages, pool, kafka)] = re.findall(
        r"^([\d,]+) messages from 2 producing/polling threads: ([\d,]+) through one ConfluentProducer"
        r".* and every 4th message, ([\d,]+) in all, through two KafkaProducers",
        done.stderr,
        re.MULTILINE,
    )
    assert (messages, pool, kafka) == ("2,000", "1,500", "500")
    finals = [
        line.split(": ", 1)[1].split("  ")[0]
        for line in done.stderr.splitlines()
        if "pool produced" in line and "[" in line
    ]
    assert finals[-1] == "pool produced 1,500/1,500, KafkaProducers 500/500"
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["stock", "arroyo", "with", "arroyo_metrics_buffer"]
    # (The stock run's exceptions, when it raised any, are listed after the table.)
    [result] = [line for line in lines if line.startswith("result ")]
    assert result.split()[-1] == "exact"
    assert lines[-1] == "The patched run is exact: every delivery counted once, nothing raised."


@needs_kafka
def test_check_reports_each_target() -> None:
    done = cli("check")
    assert done.returncode == 0, done.stderr
    for target in TARGETS:
        [line] = [line for line in done.stdout.splitlines() if line.startswith(target)]
        assert line.split()[-2:] == ["no", "yes"]  # patched now / install() would patch
    done = cli("check", "--import", "arroyo_metrics_buffer.auto", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] is True
    assert [(t["target"], t["patched_now"], t["install_would_patch"]) for t in report["targets"]] == [
        (t, True, True) for t in TARGETS
    ]
    assert report["build"] == ("free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "with GIL")


@needs_kafka
def test_check_says_install_patches_nothing_when_switched_off() -> None:
    done = cli("check", "--import", "arroyo_metrics_buffer.auto", switch=" OFF ")
    assert done.returncode == 0, done.stderr
    assert "ARROYO_METRICS_BUFFER= OFF : install() patches nothing" in done.stdout.splitlines()
    for target in TARGETS:
        [line] = [line for line in done.stdout.splitlines() if line.startswith(target)]
        assert line.split()[-2:] == ["no", "no"]  # patched now / install() would patch
    report = json.loads(cli("check", "--json", switch="off").stdout)
    assert [(t["patched_now"], t["install_would_patch"]) for t in report["targets"]] == [(False, False)] * 2
    assert report["switch"] == "off"


@needs_kafka
def test_check_fails_when_the_start_up_module_does_not_import() -> None:
    done = cli("check", "--import", "no_such_module_here")
    assert done.returncode == 2
    assert "imported no_such_module_here: ModuleNotFoundError" in done.stdout


#: The smallest bench that still runs every figure.
SMALL_BENCH = ["--rounds", "1", "--calls", "2000", "--messages", "2000", "--consume", "500"]


@needs_kafka
def test_bench_json() -> None:
    done = cli("bench", *SMALL_BENCH, "--memory-rounds", "1", "--memory-seconds", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["figures"]
    assert [f["figure"] for f in figures] == [
        "MetricsBuffer.incr_counter",
        "MetricsBuffer.incr_timing",
        "ConfluentProducer delivery callback",
        "produce + deliver on the mock cluster",
        "consumer on the mock cluster, msg/s",
        "consumer on the mock cluster, CPU per message",
        "memory of one window: 1,000,000 samples, 10,000 counters",
        "peak memory producing at full speed for 0.5 s",
    ]
    assert all(
        f["stock"] > 0 and f["patched"] > 0 and f["ratio"] == f["patched"] / f["stock"] for f in figures
    )
    # Each recording call, and the consumer, has its floor, measured in the same rounds; the
    # others have none.
    assert [f["floor"] is not None for f in figures] == [True] * 3 + [False] + [True] * 2 + [False] * 2
    assert all(f["floor_ratio"] == f["patched"] / f["floor"] for f in figures if f["floor"] is not None)
    assert [sorted(f["targets"]) for f in figures] == [["floor", "stock"]] * 3 + [["stock"]] * 3 + [[]] * 2
    # The callback's floor with the clock read its latency sample needs (arroyo 2.40.3+ only).
    clock_floor = figures[2]["clock_floor"]
    assert clock_floor > 0 if producer_has_latency() else clock_floor is None


@needs_kafka
@pytest.mark.usefixtures("uninstalled")
def test_bench_rounds_alternate_abba_with_the_patch_installed_only_for_patched_rounds() -> None:
    from arroyo_metrics_buffer.cli.bench import alternate

    runs: list[tuple[str, bool]] = []

    def side(name: str, value: float) -> Callable[[], float]:
        def run() -> float:
            runs.append((name, bool(installed())))
            return value + len(runs)

        return run

    assert alternate(side("stock", 100.0), side("patched", 0.0), 4) == (100.0 + 6.5, 0.0 + 6.5)
    assert (
        runs
        == [("stock", False), ("patched", True)]
        + [
            ("stock", False),
            ("patched", True),
            ("patched", True),
            ("stock", False),
        ]
        * 2
    )
    assert not installed()


@needs_kafka
@pytest.mark.usefixtures("uninstalled")
def test_bench_runs_the_floor_once_a_round_first_then_last_uninstalled_or_not() -> None:
    from arroyo_metrics_buffer.cli.bench import alternate

    runs: list[str] = []

    def side(name: str, value: float) -> Callable[[], float]:
        def run() -> float:
            runs.append(name)
            return value

        return run

    assert alternate(side("stock", 3.0), side("patched", 2.0), 2, floor=side("floor", 1.0)) == (3.0, 2.0, 1.0)
    warm_up = ["stock", "patched", "floor"]
    assert runs == [*warm_up, "floor", "stock", "patched", "patched", "stock", "floor"]


@needs_kafka
@pytest.mark.usefixtures("uninstalled")
def test_bench_refuses_a_stock_producer_the_patch_adopted() -> None:
    from arroyo.backends.kafka.consumer import ConfluentProducer

    from arroyo_metrics_buffer.cli.bench import still_stock

    producer = ConfluentProducer(dict(MOCK_CLUSTER))
    still_stock(producer)
    install()
    producer._ConfluentProducer__flush_metrics()  # arroyo's flush() does this, through the class
    with pytest.raises(RuntimeError, match="the stock ConfluentProducer was adopted by the patch"):
        still_stock(producer)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["_scenario"], "invalid choice: '_scenario'"),
        (["demo", "--messages", "-5"], "must be greater than 0, got -5"),
        (["demo", "--messages", "many"], "expected a whole number, got 'many'"),
        (["demo", "--bootstrap-servers", "localhost"], "expected HOST:PORT"),
        pytest.param(
            ["demo", "--bootstrap-servers", "127.0.0.1:1"],
            "cannot reach Kafka at 127.0.0.1:1",
            marks=needs_kafka,
        ),
        ([], "the following arguments are required"),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(args: list[str], message: str) -> None:
    started = time.monotonic()
    done = cli(*args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if not args or args[0] != "demo":  # the top-level usage lists the public commands only
        assert done.stderr.startswith(
            "usage: arroyo-metrics-buffer [-h] [--version] {demo,check,bench} ...\n"
        )
    assert done.stderr.count("_scenario") == (1 if "_scenario" in args else 0)  # only the input echoed
    assert time.monotonic() - started < 30


def test_console_script() -> None:
    script = Path(sys.executable).with_name("arroyo-metrics-buffer")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "{demo,check,bench}" in done.stdout


def scenario_children(demo_pid: int) -> list[int]:
    """Pids of the scenario processes that demo `demo_pid` started (found by their --parent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"arroyo_metrics_buffer.cli.scenario" in argv
                and b"--parent" in argv
                and argv[argv.index(b"--parent") + 1] == str(demo_pid).encode()
            ):
                found.append(int(entry.name))
    return found


@needs_kafka
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds processes through /proc")
def test_a_killed_demo_leaves_no_scenario_running() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "arroyo_metrics_buffer", "demo", "--messages", "100000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (children := scenario_children(demo.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "the demo never started its scenario"
    finally:
        demo.kill()
        demo.wait(30)
    deadline = time.monotonic() + 10
    while scenario_children(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scenario_children(demo.pid) == [], "the scenario outlived its demo"


def test_version_is_the_native_modules() -> None:
    done = cli("--version", timeout=60)
    assert done.returncode == 0
    assert done.stdout == f"arroyo-metrics-buffer {arroyo_metrics_buffer.__version__}\n"
    cargo = (Path(__file__).parents[1] / "Cargo.toml").read_text()
    assert re.search(r'^version = "(.+)"$', cargo, re.MULTILINE)[1] == arroyo_metrics_buffer.__version__  # type: ignore[index]


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_without_the_kafka_extras_the_error_says_what_to_install(command: str) -> None:
    code = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = sys.modules['arroyo'] = None  # as if not installed\n"
        "from arroyo_metrics_buffer.cli import main\n"
        f"print(main([{command!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "2\n"
    assert done.stderr.startswith("error: ")
    assert done.stderr.endswith(
        "(demo and bench need sentry-arroyo and confluent-kafka: pip install 'arroyo-metrics-buffer[kafka]')\n"
    )


@needs_kafka
def test_check_shows_no_local_path_and_bench_no_librdkafka_noise() -> None:
    check = cli("check")
    first = check.stdout.splitlines()[0]
    assert re.fullmatch(r"arroyo-metrics-buffer \S+  \(_native\.[\w.-]+\)", first), first
    assert (
        json.loads(cli("check", "--json").stdout)["native_module"] == arroyo_metrics_buffer._native.__file__
    )
    bench = cli("bench", *SMALL_BENCH, "--memory-rounds", "0")
    assert bench.returncode == 0, bench.stderr
    [versions, rounds] = bench.stderr.splitlines()
    assert versions.startswith("arroyo ") and rounds.startswith(
        "medians of 1 alternating rounds (stock, patched, patched, stock, ...)"
    )
    assert bench.stdout.splitlines()[0].split() == [
        "figure",
        "unit",
        "stock",
        "arroyo",
        "patched",
        "floor",
        "vs",
        "stock",
        "vs",
        "floor",
        "targets",
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stalled_run_says_it_is_still_waiting_with_the_time_taken() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("stock arroyo", stream=out, clock=clock)
    for text, seconds in [("produced 10", 0), ("produced 20", 2), ("produced 20", 4), ("produced 20", 12)]:
        clock.now = 100.0 + seconds
        progress.show(text)
    clock.now = 113.0
    progress.show("produced 30", final=True)
    assert out.getvalue().splitlines() == [
        "  stock arroyo [0 s]: produced 10",
        "  stock arroyo [2 s]: produced 20",
        "  stock arroyo [4 s]: produced 20  (unchanged for 2 s; still waiting)",
        "  stock arroyo [12 s]: produced 20  (unchanged for 10 s; still waiting)",
        "  stock arroyo [13 s]: produced 30",
    ]


def run_result(difference: dict[str, int]) -> RunResult:
    delivered = {"success": 70, "error": 5}
    return RunResult(
        arroyo="2.48.0",
        patched=[],
        messages=100,
        threads=1,
        seconds=1.0,
        messages_per_second=75,
        exceptions={},
        exception_examples={},
        pool=PoolReport(
            produced=75,
            delivered=delivered,
            callbacks_never_ran=0,
            produce_status_emitted={s: delivered[s] + difference[s] for s in delivered},
            difference=difference,
            callback_latency_samples=None,
        ),
        kafka={
            name: KafkaReport(12, {"success": 12, "error": 0, "unresolved": 0}, {"success": 12, "error": 0})
            for name in ("demo-kafka-1", "demo-kafka-2")
        },
        forward=ForwardReport(94, {"success": 94}),
        stream_processor=StreamReport(94, 94, 3),
        exact=not any(difference.values()),
    )


def test_the_demo_table_says_what_its_differences_are() -> None:
    runs: list[RunResult | RunFailure] = [
        run_result({"success": 12, "error": -3}),
        run_result({"success": 0, "error": 0}),
    ]
    assert RunResult.from_json(json.loads(json.dumps(runs[0].to_json()))) == runs[0]
    rows: dict[str, list[str]] = {}
    for line in render(runs).splitlines():  # the first row of each label: the pool's
        rows.setdefault(line[:60].strip(), line[60:].split())
    assert rows["emitted minus delivered, success / error (+ extra, - lost)"] == [
        "+12",
        "/",
        "-3",
        "0",
        "/",
        "0",
    ]
    assert rows["produce_status emitted (success / error)"] == ["82", "/", "2", "70", "/", "5"]
    assert rows["result"] == ["WRONG", "exact"]
    assert split(100, 1) == (75, 25)
    assert split(2000, 3) == (1502, 498)  # 667 + 667 + 666: every 4th, 166 each, to the KafkaProducers
    assert split(10, 4) == (10, 0)


def test_the_demo_table_shows_a_failed_run() -> None:
    text = render(
        [RunFailure(False, "the run exited with 1 and no result"), run_result({"success": 0, "error": 0})]
    )
    assert "stock arroyo failed" in text and "the run exited with 1 and no result" in text
