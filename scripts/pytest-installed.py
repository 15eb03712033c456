"""Runs pytest on tests/ against the arroyo_metrics_buffer installed in this interpreter's
environment, never a source tree: imports it first, says where it came from, and refuses to run the
tests unless that is the environment's site-packages.

Usage (from the repository root): PYTHON scripts/pytest-installed.py [pytest args...]
"""

import os
import sys
import sysconfig

# As `python -m pytest` does: the current directory first on sys.path, not this script's.
sys.path[0] = os.getcwd()

import pytest  # noqa: E402

import arroyo_metrics_buffer  # noqa: E402

where = os.path.realpath(arroyo_metrics_buffer.__file__)
site = {os.path.realpath(sysconfig.get_path(key)) for key in ("purelib", "platlib")}
print(f"arroyo_metrics_buffer {arroyo_metrics_buffer.__version__} from {where}", flush=True)
if not any(where.startswith(path + os.sep) for path in site):
    sys.exit(f"arroyo_metrics_buffer comes from {where}, not from site-packages ({', '.join(sorted(site))})")
sys.exit(pytest.main(sys.argv[1:]))
