"""The process's runtime settings (loader/servables/runtime.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.daemon_process import ROOT


def test_prepare_runtime_shortens_the_interpreters_switch_interval():
    # A thread decoding a large body would otherwise keep the GIL 5 ms from each event loop
    # callback that asks for it (issue 21, attack 5). In a child: the setting is the process's.
    code = (
        "import sys\n"
        "from loader.servables.runtime import SWITCH_INTERVAL_SECONDS, prepare_runtime\n"
        "before = sys.getswitchinterval()\n"
        "prepare_runtime()\n"
        "print(before, sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, after, wanted = map(float, run.stdout.split())
    assert before == 0.005  # Python's default, which this changes
    assert after == wanted <= 0.001
