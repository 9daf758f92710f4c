"""Tiny real SavedModels for tests: y = 0.5 * x + intercept, one per intercept, built once
per test session and copied into place with the atomic-publish pattern."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


class ModelBuilder:
    """Publishes versions of a linear model whose intercept tells versions apart."""

    def __init__(self, cache: Path) -> None:
        self._cache = cache

    def built(self, intercept: float) -> Path:
        """A SavedModel folder for `intercept`, written on first use."""
        folder = self._cache / f"intercept-{intercept:g}"
        if not folder.is_dir():
            from loader.app.demo import write_linear_model

            write_linear_model(folder, slope=0.5, intercept=intercept)
        return folder

    def publish(self, base: Path, version: int, intercept: float | None = None) -> Path:
        """Copy a model beside `base/version`, then rename it into place."""
        base.mkdir(parents=True, exist_ok=True)
        target = base / str(version)
        tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.built(version if intercept is None else intercept), tmp)
        os.rename(tmp, target)
        return target


def write_slow_model(path: Path) -> None:
    """A SavedModel whose `serving_default` spins `n` loop iterations before answering
    y = x, so a test can keep a request in flight for as long as it needs."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None, 1], tf.float32, name="x"),
            tf.TensorSpec([], tf.int64, name="n"),
        ])
        def __call__(self, x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
            _, total = tf.while_loop(
                lambda i, t: i < n, lambda i, t: (i + 1, t + 1.0),
                [tf.constant(0, tf.int64), tf.constant(0.0)],
            )
            return {"y": x + 0.0 * total}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
