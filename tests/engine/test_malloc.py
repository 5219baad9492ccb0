"""client_gui/engine/malloc.py: the glibc knobs are called for real (or skipped off glibc)."""

import subprocess
import sys

from client_gui.engine import malloc


def test_tune_and_trim_run_in_a_fresh_process() -> None:
    """mallopt must come before threads allocate: a fresh interpreter, as the CLI does it."""
    code = ("from client_gui.engine import malloc; malloc.tune(); malloc.trim(); "
            "malloc.keep_freed(); "
            "data = [bytes(1 << 20) for _ in range(64)]; del data; malloc.trim(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "ok"


def test_trim_is_harmless_when_called_often() -> None:
    for _ in range(100):
        malloc.trim()
