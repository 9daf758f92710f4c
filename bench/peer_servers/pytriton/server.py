"""PyTriton peer of bench/peers.py: the MLP behind Triton Inference Server's C++ front.

Written as PyTriton's docs recommend: `Triton().bind(...)` of an `@batch`-decorated infer
function, with Triton's dynamic batcher (`ModelConfig(max_batch_size=32,
batcher=DynamicBatcher(max_queue_delay_microseconds=2000))`, "Binding Configuration" /
"Batching") and two model instances, one a core (a list of infer functions, "Multi-instance
models"). Each instance loads the SavedModel with `tf.saved_model.load` and calls
`serving_default`. Triton's own server (shipped in the wheel) runs as a child process.

    python server.py --model DIR --port P --grpc-port G --metrics-port M

Request: KServe v2, POST /v2/models/mlp/infer `{"inputs": [{"name": "x", "shape": [1, 64],
"datatype": "FP32", "data": [...]}]}`; the answer's `outputs[0].data` holds y.
"""

from __future__ import annotations

import argparse
import os
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def infer_function(model_dir: str):  # type: ignore[no-untyped-def]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": signature(x=tf.constant(x))["y"].numpy()}

    return infer



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    # Its gRPC and metrics ports, also on 127.0.0.1 (unused by the bench; given by it).
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    # Triton runs the infer functions' proxies in its Python backend stub, which links
    # libpython3.11.so by name: without this it may load another 3.11 build (Debian's
    # 3.11.2) beside this interpreter's standard library, and fail on the mismatch
    # ("'_thread.RLock' object has no attribute '_recursion_count'", PyTriton issue 51).
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            [libdir, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
    config = TritonConfig(http_address="127.0.0.1", http_port=args.port,
                          grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          metrics_address="127.0.0.1", metrics_port=args.metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=[infer_function(args.model) for _ in range(2)],
            inputs=[Tensor(name="x", dtype=np.float32, shape=(64,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=32,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=2000)),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
