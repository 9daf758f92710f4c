"""TensorFlow's start-up lines on stderr: filtered at import, everything else kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loader.quiet_tf import native_stderr_filtered
from tests.daemon_process import ROOT


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_a_plain_tensorflow_import_prints_the_noise_this_filters():
    # The reference: without the filter, the start-up lines do reach stderr.
    plain = _python("import tensorflow as tf; tf.config.list_physical_devices()")
    assert plain.returncode == 0, plain.stderr
    assert "absl::InitializeLog()" in plain.stderr


def test_import_tensorflow_leaves_stderr_clean_and_tensorflow_usable():
    quiet = _python(
        "from loader.quiet_tf import import_tensorflow\n"
        "import_tensorflow()\n"
        "import tensorflow as tf\n"
        "print(float(tf.constant(2.0) + 1))\n"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "3.0"
    assert quiet.stderr == ""


def test_other_lines_written_to_the_descriptor_are_kept_in_order(capfd):
    with native_stderr_filtered():
        os.write(2, b"first line\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"second line\n")
    assert capfd.readouterr().err == "first line\nsecond line\n"


def test_nothing_is_dropped_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError), native_stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        raise RuntimeError("the import failed")
    assert "absl::InitializeLog()" in capfd.readouterr().err  # a known line, kept: it failed
