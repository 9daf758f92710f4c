"""Lay out what TF Serving's own `tensorflow_model_server_test.py` expects, around modelwatch.

Usage (see docs/tfserving_suite.md): put TF Serving's two test files in SUITE/src, then

    .venv/bin/python docs/tfserving_suite/prepare.py SUITE

builds SUITE/srcdir (the test's TEST_SRCDIR): the `tensorflow_model_server` shim that runs
this worktree's `modelwatch serve "$@"`, TF Serving's test models (from
tests/testdata/tfserving), the half_plus_three model (generated with TensorFlow:
the public tree's copy is a binary blob not stored here), the two TFLite test models
(converted by TensorFlow, as tests/savedmodels.py builds them for our own tests), and the
small config files the tests read. Nothing of TF Serving's code is copied into this repository.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "testdata" / "tfserving"

GOOD_MODEL_CONFIG = """model_config_list: {
  config: {
    name: "half_plus_two",
    base_path: "${TEST_HALF_PLUS_TWO_DIR}",
    model_platform: "tensorflow"
  },
  config: {
    name: "half_plus_three",
    base_path: "${TEST_HALF_PLUS_THREE_DIR}",
    model_platform: "tensorflow"
  }
}
"""
MONITORING_CONFIG = """prometheus_config: {
  enable: true,
  path: "/monitoring/prometheus/metrics"
}
"""
SHIM = """#!/bin/sh
# TF Serving's binary, as its tests call it: modelwatch with the same flags.
exec {python} -m loader serve "$@"
"""


def _half_plus_three(folder: Path) -> None:
    """y = 0.5x + 3 with a serving_default signature x -> y, as TF Serving's test model."""
    import tensorflow as tf

    class HalfPlusThree(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + 3.0}

    module = HalfPlusThree()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


def main(suite: Path) -> None:
    tfs = suite / "srcdir" / "tf_serving" / "tensorflow_serving"
    testdata = tfs / "servables" / "tensorflow" / "testdata"
    servers = tfs / "model_servers"
    testdata.mkdir(parents=True, exist_ok=True)
    servers.mkdir(parents=True, exist_ok=True)
    for name in ("saved_model_half_plus_two_cpu", "saved_model_half_plus_two_tf2_cpu",
                 "half_plus_two_model_metadata.json"):
        link = testdata / name
        if not link.is_symlink():
            link.symlink_to(TESTDATA / name)
    (testdata / "good_model_config.txt").write_text(GOOD_MODEL_CONFIG)
    (testdata / "bad_model_config.txt").write_text("improperly formatted file")
    (testdata / "monitoring_config.txt").write_text(MONITORING_CONFIG)
    three = testdata / "saved_model_half_plus_three" / "00000123"
    if not three.exists():
        _half_plus_three(three)
    sys.path.insert(0, str(ROOT))
    from tests.savedmodels import tflite_half_plus

    for name, kind in (("saved_model_half_plus_two_tflite", "plain"),
                       ("saved_model_half_plus_two_tflite_with_sigdef", "tfs_sigdef")):
        model = testdata / name / "00000123" / "model.tflite"
        if not model.exists():
            model.parent.mkdir(parents=True)
            model.write_bytes(tflite_half_plus(2.0, kind))
    shim = servers / "tensorflow_model_server"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    print(f"TEST_SRCDIR={suite / 'srcdir'}; the shim runs {sys.executable} -m loader serve")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(Path(sys.argv[1]).resolve())
