"""MLServer peer of bench/peers.py: a custom inference runtime calling the SavedModel.

Written as MLServer's docs recommend: a custom runtime (`MLModel` with `load` and
`predict`, "Custom Inference Runtimes"), adaptive batching in the model settings
(`max_batch_size: 32, max_batch_time: 0.002`, "Adaptive Batching") and
`parallel_workers: 2` in the server settings (one inference worker a core, "Parallel
Inference"). Each worker loads the SavedModel with `tf.saved_model.load` and calls
`serving_default`.

    python server.py --model DIR --port P --grpc-port G --metrics-port M

writes settings.json and model-settings.json into a temporary folder and becomes
`mlserver start` on it (this file is also the runtime: `server.MLPRuntime`).
Request: V2, POST /v2/models/mlp/infer `{"inputs": [{"name": "x", "shape": [1, 64],
"datatype": "FP32", "data": [...]}]}`; the answer's `outputs[0].data` holds y.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

HERE = Path(__file__).resolve().parent


class MLPRuntime(MLModel):
    async def load(self) -> bool:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        uri = self.settings.parameters.uri
        self._signature = tf.saved_model.load(uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype("float32")
        y = self._signature(x=self._tf.constant(x))["y"].numpy()
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("y", y)])



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    # Its gRPC and metrics ports, also on 127.0.0.1 (unused by the bench; given by it).
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": args.port, "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port, "parallel_workers": 2, "debug": False,
    }))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "mlp", "implementation": "server.MLPRuntime",
        "max_batch_size": 32, "max_batch_time": 0.002,
        "parameters": {"uri": str(Path(args.model).resolve())},
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    mlserver = str(Path(sys.executable).with_name("mlserver"))
    os.execve(mlserver, [mlserver, "start", str(folder)], env)


if __name__ == "__main__":
    main()
