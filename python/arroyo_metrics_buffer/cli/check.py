"""`check`: is the native buffer active here? What arroyo looks like, and what install() does."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import sysconfig
from typing import Any

from .. import _native
from .._patch import SWITCH, arroyo_version, status, switched_off
from .table import table


def report(imports: list[str]) -> dict[str, Any]:
    failed = {}
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as e:
            failed[module] = f"{type(e).__name__}: {e}"
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    try:
        from .kafka import versions

        kafka: str | None = versions()
    except ImportError:
        kafka = None
    arroyo = arroyo_version()
    targets = (
        [
            {
                "target": s.name,
                "shape": s.shape.description if s.shape else None,
                "problem": s.problem,
                "patched_now": s.patched,
                "install_would_patch": s.would_patch,
            }
            for s in status()
        ]
        if arroyo is not None
        else []
    )
    return {
        "arroyo_metrics_buffer": _native.__version__,
        "native_module": _native.__file__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "build": "free-threaded" if free_threaded else "with GIL",
        "gil_enabled": gil,
        "arroyo": arroyo,
        "confluent_kafka": kafka,
        "switch": os.environ.get(SWITCH),
        "imported": imports,
        "import_errors": failed,
        "targets": targets,
    }


def check(imports: list[str], as_json: bool) -> int:
    r = report(imports)
    broken = [t for t in r["targets"] if t["shape"] is None]
    code = 2 if (broken or r["import_errors"]) else 0
    if as_json:
        print(json.dumps(dict(r, ok=code == 0), indent=2))
        return code
    yes = {True: "yes", False: "no"}
    # The file name says which build; its full path (local to this machine) is in --json.
    print(f"arroyo-metrics-buffer {r['arroyo_metrics_buffer']}  ({os.path.basename(r['native_module'])})")
    print(f"Python {r['python']}, {r['build']} build, GIL {'enabled' if r['gil_enabled'] else 'disabled'}")
    print(
        f"arroyo {r['arroyo'] or 'not installed'}; {r['confluent_kafka'] or 'confluent-kafka not installed'}"
    )
    if r["switch"] is None:
        print(f"{SWITCH} is not set")
    else:
        print(f"{SWITCH}={r['switch']}" + (": install() patches nothing" if switched_off() else ""))
    for module in imports:
        print(f"imported {module}: " + (r["import_errors"].get(module) or "ok"))
    if not r["targets"]:
        print("nothing to patch without arroyo")
        return code
    head = ("target", "arroyo's shape here", "patched now", "install() would patch")
    rows = [
        (
            t["target"],
            t["shape"] or f"UNKNOWN: {t['problem']}",
            yes[t["patched_now"]],
            yes[t["install_would_patch"]],
        )
        for t in r["targets"]
    ]
    print("\n".join(table(head, rows, left=len(head))))
    if not imports and not any(t["patched_now"] for t in r["targets"]):
        print(
            "\n'patched now' is about this process: pass --import YOUR_STARTUP_MODULE to check what it does,"
        )
        print("or call arroyo_metrics_buffer.installed() inside the application.")
    if broken:
        print("\nA target has a shape this version does not know: install() leaves it unpatched.")
    return code
