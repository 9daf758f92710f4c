"""Run TF Serving's `tensorflow_model_server_test.py`, unmodified, from SUITE/src.

    .venv/bin/python docs/tfserving_suite/run.py SUITE [unittest arguments, e.g. -v or a test name]

Bazel would make `tensorflow_serving.model_servers.test_util` importable; here the test's
base module is registered under that name from SUITE/src, then the test runs as __main__.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import types
from pathlib import Path

BASE = "tensorflow_serving.model_servers.test_util.tensorflow_model_server_test_base"


def main(suite: Path, args: list[str]) -> None:
    src = suite / "src"
    os.environ["TEST_SRCDIR"] = str(suite / "srcdir")
    import tensorflow_serving

    for package in ("tensorflow_serving.model_servers", "tensorflow_serving.model_servers.test_util"):
        module = types.ModuleType(package)
        module.__path__ = []
        sys.modules[package] = module
    setattr(sys.modules["tensorflow_serving"], "model_servers", sys.modules["tensorflow_serving.model_servers"])
    spec = importlib.util.spec_from_file_location(BASE, src / "tensorflow_model_server_test_base.py")
    assert spec is not None and spec.loader is not None
    base = importlib.util.module_from_spec(spec)
    sys.modules[BASE] = base
    spec.loader.exec_module(base)
    sys.modules["tensorflow_serving.model_servers.test_util"].tensorflow_model_server_test_base = base  # type: ignore[attr-defined]
    sys.argv = [str(src / "tensorflow_model_server_test.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2:])
