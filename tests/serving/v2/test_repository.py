"""Triton's repository extension over a real manager (fake loads): the index in Triton's
words, unload and load of the config's models, what it refuses, and unloads that last
through config reloads. `serve` plays the daemon: it applies the config's models less the
unloaded ones, and storage reports the versions of those it adds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loader.base import InvalidArgument, NotFound, ServingError
from loader.manager.manager import Manager, ModelSpec
from loader.serving.dataplane import DataPlane
from loader.serving.v2.repository import Repository
from policies.selection import Latest
from policies.transition import availability_preserving
from tests.daemon_process import wait_until
from tests.fakes import FakeLoader, refs

VERSIONS = {"a": 1, "b": 2}


class Daemon:
    """The parts of the daemon the repository drives: the config and what it serves."""

    def __init__(self, loader: FakeLoader) -> None:
        self.manager = Manager(loader, load_retries=0)
        self.dataplane = DataPlane(self.manager)
        self.config = list(VERSIONS)
        self.repository = Repository(
            self.dataplane, lambda: self.config, self.serve, self.manager.wait_until, 10.0
        )

    def serve(self) -> None:
        """The daemon's reload_models: the config less the unloaded, storage reporting."""
        self.repository.retain(self.config)
        served = [m for m in self.config if m not in self.repository.unloaded]
        self.manager.set_models([ModelSpec(m, Latest(1), availability_preserving) for m in served])
        for model in served:
            self.manager.on_versions(model, refs(VERSIONS[model]))


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    serving = Daemon(FakeLoader())
    serving.serve()
    wait_until(lambda: all(serving.dataplane.readiness().values()), 10, "both models ready")
    yield serving
    serving.manager.stop()


def test_the_index_lists_every_version_in_tritons_words(daemon: Daemon) -> None:
    assert daemon.repository.index() == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "version": "2", "state": "READY"},
    ]


def test_unload_and_load_again(daemon: Daemon) -> None:
    daemon.repository.unload("a")
    assert daemon.repository.unloaded == {"a"}
    with pytest.raises(NotFound):
        daemon.dataplane.hold("a")
    index = daemon.repository.index()
    assert index[0] == {"name": "a", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert daemon.repository.index(ready_only=True) == [
        {"name": "b", "version": "2", "state": "READY"}
    ]
    daemon.repository.load("a", {})  # blocks until it serves
    assert daemon.dataplane.readiness() == {"a": True, "b": True}
    with daemon.dataplane.hold("a") as lease:
        assert lease.version == 1


def test_an_unload_lasts_through_config_reloads_until_the_model_leaves_the_config(
    daemon: Daemon,
) -> None:
    daemon.repository.unload("b")
    daemon.serve()  # a config reload, unchanged
    assert daemon.repository.unloaded == {"b"} and "b" not in daemon.dataplane.readiness()
    daemon.config = ["a"]  # b leaves the config ...
    daemon.serve()
    daemon.config = ["a", "b"]  # ... and comes back: served again
    daemon.serve()
    assert daemon.repository.unloaded == frozenset()
    wait_until(lambda: daemon.dataplane.readiness().get("b"), 10, "b served again")


def test_what_the_repository_refuses(daemon: Daemon) -> None:
    with pytest.raises(NotFound, match="the config has no model 'c'"):
        daemon.repository.load("c", {})
    with pytest.raises(NotFound):
        daemon.repository.unload("c")
    with pytest.raises(InvalidArgument, match=r"\['config', 'file:1/model.savedmodel'\]"):
        daemon.repository.load("a", {"config": "{}", "file:1/model.savedmodel": "AA=="})


def test_a_load_that_fails_says_why() -> None:
    loader = FakeLoader()
    loader.failing.add(2)
    serving = Daemon(loader)
    try:
        serving.serve()
        with pytest.raises(ServingError, match="failed to load 'b': no version is available "
                                               r"\(.*version 2 is corrupt"):
            serving.repository.load("b", {})
        (entry,) = [e for e in serving.repository.index() if e["name"] == "b"]
        assert entry["state"] == "UNAVAILABLE" and "corrupt" in entry["reason"]
    finally:
        serving.manager.stop()
