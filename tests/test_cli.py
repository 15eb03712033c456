"""The command line, run as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

TARGETS = ["arroyo.processing.processor.MetricsBuffer", "arroyo.backends.kafka.consumer.ConfluentProducer"]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROYO_METRICS_BUFFER"}
    return subprocess.run(
        [sys.executable, "-m", "arroyo_metrics_buffer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


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


def test_demo_table() -> None:
    done = cli("demo", "--messages", "2000", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "mock cluster at 127.0.0.1:" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["stock", "arroyo", "with", "arroyo_metrics_buffer"]
    assert lines[-3].split()[0] == "result" and lines[-3].split()[-1] == "exact"
    assert lines[-1] == "The patched run is exact: every delivery counted once, nothing raised."


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


def test_check_fails_when_the_start_up_module_does_not_import() -> None:
    done = cli("check", "--import", "no_such_module_here")
    assert done.returncode == 2
    assert "imported no_such_module_here: ModuleNotFoundError" in done.stdout


def test_bench_json() -> None:
    done = cli("bench", "--rounds", "1", "--calls", "2000", "--messages", "2000", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["figures"]
    assert [f["figure"] for f in figures] == [
        "MetricsBuffer.incr_counter",
        "MetricsBuffer.incr_timing",
        "ConfluentProducer delivery callback",
        "produce + deliver on the mock cluster",
    ]
    assert all(
        f["stock"] > 0 and f["patched"] > 0 and f["ratio"] == f["patched"] / f["stock"] for f in figures
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--messages", "-5"], "must be greater than 0, got -5"),
        (["demo", "--messages", "many"], "expected a whole number, got 'many'"),
        (["demo", "--bootstrap-servers", "localhost"], "expected HOST:PORT"),
        (["demo", "--bootstrap-servers", "127.0.0.1:1"], "cannot reach Kafka at 127.0.0.1:1"),
        ([], "the following arguments are required"),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(args: list[str], message: str) -> None:
    started = time.monotonic()
    done = cli(*args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


def test_console_script() -> None:
    script = Path(sys.executable).with_name("arroyo-metrics-buffer")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "{demo,check,bench}" in done.stdout


def scenario_children(demo_pid: int) -> list[int]:
    """Pids of the `_scenario` processes that demo `demo_pid` started (found by their --parent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"_scenario" in argv
                and b"--parent" in argv
                and argv[argv.index(b"--parent") + 1] == str(demo_pid).encode()
            ):
                found.append(int(entry.name))
    return found


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
