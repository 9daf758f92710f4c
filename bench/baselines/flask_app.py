"""The naive baseline: a Flask app that calls the model once per request.

What many teams write first: each gunicorn worker loads the SavedModel with
`tf.saved_model.load` and calls its `serving_default` signature for every request, with
no batching. It answers TF Serving's row-format predict on the same path as modelwatch,
so the same hey command drives both. `bench/throughput.py` launches it as

    MODEL_DIR=/path/to/savedmodel python -m gunicorn --workers 2 --worker-class gthread \\
        --threads 8 --bind 127.0.0.1:PORT --chdir bench/baselines 'flask_app:create_app()'

Each worker imports TensorFlow and loads its own copy of the model (no `--preload`:
TensorFlow's runtime does not survive a fork).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from flask import Flask, jsonify, request


def create_app(model_dir: str | None = None) -> Flask:
    """The app, serving the SavedModel in `model_dir` (default: $MODEL_DIR)."""
    path = model_dir or os.environ["MODEL_DIR"]
    signature = tf.saved_model.load(path).signatures["serving_default"]
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify(status="ok")

    @app.post("/v1/models/<name>:predict")
    def predict(name: str):  # type: ignore[no-untyped-def]
        instances = request.get_json(force=True)["instances"]
        y = signature(x=tf.constant(np.asarray(instances, dtype=np.float32)))["y"]
        return jsonify(predictions=y.numpy().tolist())

    return app
