"""BentoML peer of bench/peers.py: the MLP as a BentoML Service.

Written as BentoML's docs recommend: a `@bentoml.service` class with `workers=2` (one a
core, "Workers"), and a batchable API, `@bentoml.api(batchable=True, max_batch_size=32,
max_latency_ms=...)` ("Adaptive batching"): BentoML's dispatcher stacks the requests'
arrays on axis 0 and sizes its own wait from the observed latency (it has no fixed-wait
knob; `max_latency_ms` is the budget it keeps under). The model is loaded in each worker
with `tf.saved_model.load` from $MODEL_DIR and `serving_default` is called.

    MODEL_DIR=DIR bentoml serve server:MLP --host 127.0.0.1 --port P   (from this folder)

Request: POST /predict `{"instances": [[64 floats]]}`; answer `[[10 floats]]`.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=2)
class MLP:
    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(
            os.environ["MODEL_DIR"]).signatures["serving_default"]

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=32, max_latency_ms=1000)
    def predict(self, instances: np.ndarray) -> np.ndarray:
        x = self._tf.constant(np.asarray(instances, dtype=np.float32))
        return self._signature(x=x)["y"].numpy()
