"""LitServe peer of bench/peers.py: the MLP as a LitAPI.

Written as LitServe's docs recommend: a `LitAPI` with `setup` / `decode_request` /
`batch` / `predict` / `unbatch` / `encode_response`, LitServe's dynamic batching
(`max_batch_size=32, batch_timeout=0.002` on the LitAPI, "Batching" in LitServe's docs)
and `workers_per_device=2` on the CPU (one inference worker a core, "Scale with
workers"). Each worker loads the SavedModel with `tf.saved_model.load` and calls
`serving_default`.

    python server.py --model DIR --port P

Request: POST /predict `{"instances": [[64 floats]]}`; answer `{"predictions": [[10]]}`.
"""

from __future__ import annotations

import argparse
import os

import litserve as ls
import numpy as np


class MLPAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(self.model_dir).signatures["serving_default"]

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["instances"][0], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._signature(x=self._tf.constant(x))["y"].numpy()

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"predictions": [output.tolist()]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    api = MLPAPI(args.model, max_batch_size=32, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
