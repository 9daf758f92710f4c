"""The process's runtime settings (loader/servables/runtime.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.daemon_process import ROOT


def test_the_gil_is_handed_over_sooner_only_while_large_requests_decode():
    # A thread decoding a large body would otherwise keep the GIL 5 ms from each event
    # loop callback that asks for it (issue 21, attack 5). In a child: the setting is the
    # process's.
    code = (
        "import sys\n"
        "from loader.servables.runtime import hand_over_sooner\n"
        "seen = [sys.getswitchinterval()]\n"
        "hand_over_sooner(True)\n"
        "seen.append(sys.getswitchinterval())\n"
        "hand_over_sooner(False)\n"
        "seen.append(sys.getswitchinterval())\n"
        "print(*seen)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, busy, after = map(float, run.stdout.split())
    assert before == after == 0.005  # Python's own
    assert busy == 0.001
