"""The package itself: what `import wafer` gives, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import wafer
from conftest import function

# The same wafer as this process's, whether installed or from the source tree.
PACKAGE_ROOT = str(Path(wafer.__file__).resolve().parents[1])


def python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_wafer_reaches_wafer_local_without_loading_wasmtime() -> None:
    out = python(
        "import sys, wafer\n"
        "assert callable(wafer.local.run) and 'local' in wafer.__all__\n"
        "print('wasmtime' in sys.modules)\n"
    )
    assert out == "False\n"


def test_import_wafer_is_enough_to_run_locally() -> None:
    out = python(f"import wafer\nprint(wafer.local.run({str(function('stress'))!r}, {{'force': 10, 'section': 5}}).text)\n")
    assert out == '{"stress":2.0}\n'
