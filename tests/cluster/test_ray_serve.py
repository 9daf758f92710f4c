"""End to end on a real local Ray cluster (a head and a second node, `ray start` on this
machine) with `modelwatch ray` deploying 2 replicas that serve from moto's S3 server, and
requests going through the cluster's balancer (HAProxy) straight to the replicas' own REST
and gRPC ports: versions 2 to 5 roll out while 8 clients (4 REST, 4 gRPC with TF Serving's
stubs) send requests, then one replica is killed with SIGKILL under that load, then the
watcher (its successor takes over from the replicas, and version 6 still rolls out); last,
`modelwatch ray` gets SIGTERM and must exit 0 having deleted its application, and again
while an application of 3 replicas (which cannot all be placed) deploys.

Version v of the test model answers y = 0.5 * x + v, so every answer names its version.
One test, one cluster: each start of Ray and of a replica's TensorFlow costs many seconds.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Self

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.cluster.ray_cluster import (
    Deployment,
    LocalRayCluster,
    application_deleted,
    serve_state,
)
from tests.daemon_process import wait_until
from tests.s3_storage import CREDENTIALS, bucket_client
from tests.s3_storage import upload as _upload

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'modelwatch[ray]'")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BUCKET = "models"
CLIENTS = 8  # half over REST, half over gRPC
LAST = 5  # versions 2 to LAST roll out under load
REPLICA_TITLE = "ServeReplica:modelwatch:ReplicaDeployment"
WATCHER_TITLE = "ServeReplica:modelwatch:WatcherDeployment"
upload = partial(_upload, bucket=BUCKET)


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from bucket_client(moto_server, BUCKET, monkeypatch)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRayCluster]:
    # One CPU per node and one per replica: the two replicas land on different nodes.
    ray_cluster = LocalRayCluster(tmp_path, head_cpus=1, node_cpus=1, env=CREDENTIALS)
    try:
        yield ray_cluster.start()
    finally:
        ray_cluster.stop()


def version_of(answer: float) -> int:
    return round(answer - 0.5 * 2.0)


def grpc_answer(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=1)
    tensor.float_val.append(2.0)
    response = stub.Predict(request, timeout=30)
    return float(np.array(response.outputs["y"].float_val)[0])


class Clients:
    """`CLIENTS` threads asking for predictions until stopped; every answer's version and
    every failure is recorded, per client."""

    def __init__(self, deployment: Deployment) -> None:
        self.seen: list[list[int]] = [[] for _ in range(CLIENTS)]
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._deployment = deployment
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def answered_again(self) -> Callable[[], bool]:
        counts = [len(s) for s in self.seen]
        return lambda: all(len(s) > c for s, c in zip(self.seen, counts))

    def _run(self, index: int) -> None:
        with httpx.Client() as http, grpc.insecure_channel(self._deployment.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                try:
                    answer = (self._deployment.answer(http) if index % 2 == 0
                              else grpc_answer(stub))
                    self.seen[index].append(version_of(answer))
                except Exception as exc:  # every failure counts, whatever it is
                    self.failures.append(f"client {index}: {type(exc).__name__}: {exc}")


def test_rollouts_and_a_killed_replica_through_the_balancer_with_no_client_going_back(
    tmp_path: Path, s3: Any, moto_server: str, cluster: LocalRayCluster, model_builder: Any
) -> None:
    upload(s3, model_builder.built(1), "repo/m/1")
    deployment = Deployment(tmp_path, cluster, CREDENTIALS, {
        "storage": {"cache_dir": str(tmp_path / "cache"),
                    "s3": {"endpoint_url": moto_server, "region": "us-east-1"}},
        "watch": {"poll_interval_seconds": 0.3},
        "loading": {"max_retries": 0},
        "models": [{"name": "m", "base_path": f"s3://{BUCKET}/repo/m"}],
    })

    def live() -> list[dict[str, Any]]:
        return [r for r in deployment.replicas()["replicas"] if r["live"] and r["serving"]]

    def rollout() -> dict[str, Any] | None:
        try:
            return dict(deployment.replicas()["rollouts"]["m"])
        except (httpx.HTTPError, KeyError):
            return None  # the watcher restarts, or has not decided yet

    def all_on(version: int) -> Callable[[], bool]:
        def check() -> bool:
            replicas = live()
            return len(replicas) == 2 and all(
                r["models"]["m"]["routed"] == [version] and r["models"]["m"]["available"] == [version]
                for r in replicas)
        return check

    try:
        wait_until(lambda: deployment.serves(1 + 1.0), 400, "version 1 to serve through the balancer")
        wait_until(lambda: len({r["node"] for r in live()}) == 2, 300,
                   "a serving replica on each node")
        # gRPC at the same endpoint, with TF Serving's stubs and the standard health service.
        with grpc.insecure_channel(deployment.grpc_target) as channel:
            assert version_of(grpc_answer(prediction_service_pb2_grpc.PredictionServiceStub(channel))) == 1
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = "m"
            (version,) = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                status, timeout=30).model_version_status
            assert (version.version, version.state) == (1, version.AVAILABLE)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING

        with Clients(deployment) as clients:
            wait_until(lambda: all(clients.seen), 60, "every client to be answered")
            for version in range(2, LAST + 1):
                upload(s3, model_builder.built(version), f"repo/m/{version}")
                wait_until(all_on(version), 300, f"both replicas to route version {version} alone")
            wait_until(clients.answered_again(), 60, "every client to be answered after the rollouts")
            assert not clients.failures, clients.failures[:5]

            # A replica killed under load: Ray starts another, which joins at the routed version.
            before = {r["replica"] for r in live()}
            (victim, *_) = cluster.processes(REPLICA_TITLE)
            victim.send_signal(signal.SIGKILL)
            # The killed one leaves the watcher's live set when its heartbeat times out.
            wait_until(lambda: len(names := {r["replica"] for r in live()}) == 2 and names != before,
                       300, "a new replica to serve in place of the killed one")
            wait_until(all_on(LAST), 60,
                       "the new replica to route the latest version, never an older one")
            wait_until(clients.answered_again(), 60, "every client to be answered after the kill")

            # The watcher killed under load: the replicas go on serving what is routed, and
            # the watcher Serve starts in its place takes over from what they report: it
            # routes the latest version without a flip of its own, and still rolls out.
            failed_before = len(clients.failures)
            (watcher,) = cluster.processes(WATCHER_TITLE)
            watcher.send_signal(signal.SIGKILL)
            wait_until(lambda: (r := rollout()) is not None and r["flips"] == 0, 300,
                       "a new watcher to answer")
            assert (rollout() or {})["routed"] == [LAST]
            wait_until(all_on(LAST), 60, "both replicas to report to the new watcher")
            wait_until(clients.answered_again(), 60, "every client to be answered after it")
            upload(s3, model_builder.built(LAST + 1), f"repo/m/{LAST + 1}")
            wait_until(all_on(LAST + 1), 300, "the new watcher to roll out the next version")
            wait_until(clients.answered_again(), 60, "every client to be answered after that")
            assert clients.failures[failed_before:] == [], "the watcher's kill failed requests"
        # The balancer resends a request whose connection failed or was closed unanswered,
        # so the kill costs at most the requests in flight at that replica: one per client.
        print(f"requests failed around the kill: {len(clients.failures)}: {clients.failures[:8]}")
        assert len(clients.failures) <= CLIENTS, clients.failures
        for versions in clients.seen:
            assert versions[-1] == LAST + 1
            assert versions == sorted(versions), "a client saw a version, then an older one"
        rollouts = deployment.replicas()["rollouts"]["m"]
        assert (rollouts["routed"], rollouts["stage"], rollouts["flips"]) == ([LAST + 1], "steady", 1)
        status = httpx.get(f"{deployment.url}/v1/models/m", timeout=10).json()
        assert status["model_version_status"][0]["version"] == str(LAST + 1)
        assert status["model_version_status"][0]["state"] == "AVAILABLE"

        # SIGTERM, as Kubernetes and systemd stop it (Ray's driver takes it over in
        # ray.init; loader/cluster/application.py takes it back): exit 0, and the
        # application and its replicas deleted, as on SIGINT.
        assert "modelwatch" in serve_state(cluster)["applications"]
        assert deployment.stop() == 0, deployment.log()
        wait_until(lambda: application_deleted(cluster), 120,
                   "the application and its replicas to be gone", interval=1)
    except BaseException:
        print(deployment.log())
        print(cluster.log())
        raise
    finally:
        deployment.stop()

    # SIGTERM while the application deploys: 3 replicas of one CPU each on 2 nodes of one
    # CPU, so it never runs; `modelwatch ray` must not wait for it to (Serve's own wait is
    # endless here: Deployment.stop would have to kill it), but exit 0 having deleted it.
    with Deployment(tmp_path, cluster, CREDENTIALS, deployment.config, replicas=3) as deploying:
        wait_until(lambda: "modelwatch" in serve_state(cluster)["applications"], 120,
                   "the application to be deploying", interval=1)
        assert deploying.stop() == 0, deploying.log()
        wait_until(lambda: application_deleted(cluster), 120,
                   "the deploying application to be gone", interval=1)
