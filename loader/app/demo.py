"""Tiny real SavedModels, written with TF2, for the embedded demo repository and tests.

The demo model is TF Serving's `half_plus_two` in spirit: version 1 computes 0.5x + 2 and
version 2 computes 0.5x + 3, so a client can tell which version answered.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from loader.servables.quiet_tf import import_tensorflow

# TensorFlow is imported where a model is written, not here: a second `make serve`, whose
# versions exist, then costs no TensorFlow import (seconds) before the daemon's own.
if TYPE_CHECKING:
    import tensorflow as tf

DEMO_MODEL = "half_plus_two"
_DEMO_VERSIONS = {1: 2.0, 2: 3.0}  # version -> intercept; the slope is 0.5 for both


def _linear_model(slope: float, intercept: float) -> tf.Module:
    """y = slope * x + intercept, with both held in variables so `variables/` is written."""
    import_tensorflow()
    import tensorflow as tf

    model = tf.Module()
    model.slope = tf.Variable(slope, dtype=tf.float32, name="slope")
    model.intercept = tf.Variable(intercept, dtype=tf.float32, name="intercept")

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": model.slope * x + model.intercept}

    model.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")]
    )
    return model


def write_linear_model(path: str | Path, *, slope: float = 0.5, intercept: float = 2.0) -> None:
    """Writes a TF2 SavedModel computing `y = slope * x + intercept` to folder `path`.

    Its `serving_default` signature takes `x` (float32, [-1, 1]) and returns `y`. The model
    is written to a hidden folder beside `path` and renamed into place, so a watcher never
    sees it half written. Raises `FileExistsError` if `path` exists.
    """
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        model = _linear_model(slope, intercept)
        import tensorflow as tf

        tf.saved_model.save(model, str(staging), signatures={"serving_default": model.serve})
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_demo_repository(models_dir: str | Path) -> Path:
    """Makes sure `models_dir/half_plus_two` holds versions 1 and 2; returns that folder.

    Version 1 computes 0.5x + 2 and version 2 computes 0.5x + 3. Versions already present
    are left as they are, so calling this again does nothing.
    """
    base = Path(models_dir) / DEMO_MODEL
    for version, intercept in _DEMO_VERSIONS.items():
        if not (base / str(version)).exists():
            write_linear_model(base / str(version), slope=0.5, intercept=intercept)
    return base
