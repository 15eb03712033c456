"""The package's import structure: the runtime loads alone, no module imports one that imports it
back, and install() without arroyo."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import pytest

import arroyo_metrics_buffer
from arroyo_metrics_buffer import install
from helpers import run_python

PACKAGE = Path(arroyo_metrics_buffer.__file__).parent
RUNTIME = [
    "arroyo_metrics_buffer",
    "arroyo_metrics_buffer._exit",
    "arroyo_metrics_buffer._native",
    "arroyo_metrics_buffer._patch",
    "arroyo_metrics_buffer.targets",
    "arroyo_metrics_buffer.targets.base",
    "arroyo_metrics_buffer.targets.processor",
    "arroyo_metrics_buffer.targets.producer",
]


def test_importing_the_package_loads_only_the_runtime() -> None:
    out = run_python(
        "import sys, arroyo_metrics_buffer\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('arroyo_metrics_buffer', 'arroyo', 'confluent_kafka')))"
    )
    assert out == repr(RUNTIME)


def test_install_imports_nothing_beyond_arroyo_and_the_runtime() -> None:
    """install() runs at start-up: the modules it loads beyond arroyo's targets are ours alone (no
    importlib.metadata, which brings some forty modules), and it still names arroyo's version."""
    pytest.importorskip("arroyo")
    out = run_python(
        "import sys, logging, arroyo.processing.processor, arroyo.backends.kafka.consumer\n"
        "import arroyo_metrics_buffer\n"
        "before = set(sys.modules)\n"
        "arroyo_metrics_buffer.install()\n"
        "print(sorted(set(sys.modules) - before))\n"
        "from arroyo_metrics_buffer._patch import arroyo_version\n"
        "from importlib.metadata import version\n"
        "print(arroyo_version() == version('sentry-arroyo'), arroyo_version() is not None)"
    )
    new, same = out.splitlines()
    assert [m for m in ast.literal_eval(new) if not m.startswith(("arroyo.", "confluent_kafka"))] == []
    assert same == "True True"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere in its code (lazy imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                out.add(target if target in MODULES else source)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES and m != name}


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    assert graph["arroyo_metrics_buffer._patch"] == {
        "arroyo_metrics_buffer.targets",
        "arroyo_metrics_buffer.targets.base",
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph[start])

    assert [m for m in sorted(graph) if reaches(m, m, set())] == []


def test_without_arroyo(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "arroyo", None)
    with caplog.at_level(logging.INFO, logger="arroyo_metrics_buffer"):
        assert install() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"arroyo_metrics_buffer {arroyo_metrics_buffer.__version__}: arroyo is not installed; nothing to patch"
    ]
