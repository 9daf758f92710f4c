"""A replica's routing and hold barrier over a real manager with fake servables, driven
through the real REST app in-process (no Ray needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from loader.base import Code
from loader.cluster.routing import Gate, RoutedDataPlane
from loader.manager.harness import VersionStatus
from loader.manager.manager import Manager, ModelSpec
from loader.serving.rest.app import RestApi
from policies.selection import All
from policies.transition import availability_preserving
from tests.fakes import FakeLoader, refs


@pytest.fixture
def gate() -> Gate:
    return Gate(limit_seconds=30)


@pytest.fixture
def plane(gate: Gate) -> Iterator[RoutedDataPlane]:
    manager = Manager(FakeLoader(), load_retries=0)
    manager.set_models([ModelSpec("m", All(), availability_preserving),
                        ModelSpec("other", All(), availability_preserving)])
    for model in ("m", "other"):
        manager.on_versions(model, refs(1, 2))
    assert manager.wait_until(
        lambda: all(len([s for s in manager.status(m) if s.state == "AVAILABLE"]) == 2
                    for m in ("m", "other")), 10)
    routed = RoutedDataPlane(manager, gate)
    routed.route("other", frozenset({1}), ())
    yield routed
    manager.stop()


def cluster(*states: tuple[int, str]) -> tuple[VersionStatus, ...]:
    return tuple(VersionStatus("m", v, state, Code.OK, "") for v, state in states)


def served_version(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["model_spec"]["version"])


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")


def test_only_routed_versions_answer_and_status_is_the_clusters(plane: RoutedDataPlane) -> None:
    plane.route("m", frozenset({1}), cluster((2, "LOADING"), (1, "AVAILABLE")))
    app = RestApi(plane).app

    async def scenario() -> None:
        async with client(app) as http:
            assert served_version(await http.get("/v1/models/m/metadata")) == "1"
            loaded_not_routed = await http.get("/v1/models/m/versions/2/metadata")
            assert (loaded_not_routed.status_code, loaded_not_routed.json()) == (
                404, {"error": "Servable not found for request: Specific(m, 2)"})
            status = (await http.get("/v1/models/m")).json()["model_version_status"]
            assert [(s["version"], s["state"]) for s in status] == [
                ("2", "LOADING"), ("1", "AVAILABLE")]
            plane.route("m", frozenset({2}), cluster((2, "AVAILABLE")))
            assert served_version(await http.get("/v1/models/m/metadata")) == "2"

    asyncio.run(scenario())


def test_a_held_model_waits_and_is_released_onto_the_new_routing(
    plane: RoutedDataPlane, gate: Gate
) -> None:
    plane.route("m", frozenset({1}), cluster((1, "AVAILABLE")))

    async def scenario() -> None:
        async with client(RestApi(plane).app) as http:
            gate.hold("m", 7)
            assert gate.held() == {"m": 7}
            waiting = asyncio.create_task(http.get("/v1/models/m/metadata"))  # a thread waits
            leased = asyncio.create_task(plane.hold_async("m"))  # as gRPC's Predict: the loop
            # Another model is not held: it answers while m waits.
            assert served_version(await http.get("/v1/models/other/metadata")) == "1"
            await asyncio.sleep(0.2)
            assert not waiting.done() and not leased.done()
            plane.route("m", frozenset({2}), cluster((2, "AVAILABLE")))  # the flip ...
            gate.release("m")  # ... then the release, as the replica applies orders
            assert served_version(await asyncio.wait_for(waiting, 10)) == "2"
            with await asyncio.wait_for(leased, 10) as lease:
                assert lease.version == 2
            assert gate.held() == {}

    asyncio.run(scenario())


def test_a_hold_that_outlives_its_limit_answers_503_and_never_the_old_version(
    plane: RoutedDataPlane, gate: Gate
) -> None:
    plane.route("m", frozenset({1}), cluster((1, "AVAILABLE")))
    gate._limit = 0.2

    async def scenario() -> None:
        async with client(RestApi(plane).app) as http:
            gate.hold("m", 8)
            response = await http.post("/v1/models/m:predict", json={"instances": [[1.0]]})
            assert response.status_code == 503
            assert "switching versions across replicas" in response.json()["error"]

    asyncio.run(scenario())


def test_a_replica_exports_the_rollouts_it_hears_of(tmp_path) -> None:
    from loader.cluster.messages import ModelOrder, Orders
    from loader.cluster.replica import Replica
    from loader.config.schema import parse_config

    config = parse_config({"models": [{"name": "m", "base_path": str(tmp_path)}]}, "test")
    replica = Replica(config, "r1", "node", hold_limit_seconds=1)
    try:
        order = ModelOrder({}, frozenset({1}), 12, (), "holding", 3, 1, {"r2": "loading version 2"})
        replica.apply(Orders("w", 1, {"m": order}))
        text = replica.metrics.exposition().decode()
        for line in ('modelwatch_rollout_flips{model="m"} 3.0', 'modelwatch_rollout_aborts{model="m"} 1.0',
                     'modelwatch_rollout_pending{model="m"} 1.0',
                     'modelwatch_rollout_blocked_replicas{model="m"} 1.0'):
            assert line in text
        assert replica.gate.held() == {"m": 12}  # the hold is applied, and will be reported
        assert replica.report().models["m"].held == 12
    finally:
        replica.stop()


def test_a_replica_serves_rest_and_grpc_with_the_daemons_servers_and_limits(tmp_path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from loader.cluster.replica import Replica
    from loader.config.schema import parse_config

    config = parse_config({"server": {"max_url_bytes": 1024},
                           "models": [{"name": "m", "base_path": str(tmp_path)}]}, "test")
    replica = Replica(config, "r1", "node", hold_limit_seconds=1)
    try:
        endpoint = replica.serve("127.0.0.1")
        assert replica.report().endpoint == endpoint  # what the balancer is told
        assert replica._rest.fast_path  # predictions skip ASGI, as in `modelwatch serve`
        rest = f"http://127.0.0.1:{endpoint.rest_port}"
        too_long = httpx.get(f"{rest}/v1/models/{'m' * 2000}", timeout=10)
        assert too_long.status_code == 414, too_long.text  # server.max_url_bytes, as the daemon
        assert httpx.get(f"{rest}/healthz", timeout=10).status_code == 200  # HAProxy's check
        with grpc.insecure_channel(f"127.0.0.1:{endpoint.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status in (health_pb2.HealthCheckResponse.SERVING,
                                     health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        replica.stop()
