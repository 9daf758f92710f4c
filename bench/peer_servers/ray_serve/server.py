"""Ray Serve peer of bench/peers.py: the MLP behind Serve's HTTP proxy.

Written as Ray Serve's docs recommend: a deployment class with `num_replicas=2` (one a
core; "Configure Ray Serve deployments": num_replicas), and Serve's dynamic request
batching, `@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)` ("Dynamic Request
Batching"), on an async method the request handler awaits one row at a time. Each replica
loads the SavedModel with `tf.saved_model.load` and calls `serving_default`.

    python server.py --model DIR --port P

starts a local Ray cluster of its own (`ray.init` with 2 CPUs, no dashboard, a temporary
folder and node address of its own), so every Ray process (GCS, raylet, the Serve
controller and proxy, the replicas) is in this process's tree; SIGTERM shuts it down.
Request: `{"instances": [[64 floats]]}`; answer: `{"predictions": [[10 floats]]}`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

# Ray rewrites 127.0.0.1 into the machine's interface address; other loopback addresses
# it leaves alone (tests/cluster/ray_cluster.py), so the node takes one of those.
NODE_IP = "127.0.0.2"


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
class MLP:
    def __init__(self, model_dir: str) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(model_dir).signatures["serving_default"]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, rows: list[np.ndarray]) -> list[list[float]]:
        y = self._signature(x=self._tf.constant(np.stack(rows)))["y"].numpy()
        return y.tolist()

    async def __call__(self, request: Request) -> dict[str, list[list[float]]]:
        body = await request.json()
        row = np.asarray(body["instances"][0], dtype=np.float32)
        return {"predictions": [await self.predict(row)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Short: Ray puts its sockets under this folder, and socket paths are limited.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             _node_ip_address=NODE_IP, object_store_memory=100 * 1024 * 1024,
             logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(MLP.bind(args.model), name="mlp", route_prefix="/predict")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    try:
        serve.shutdown()
        ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
