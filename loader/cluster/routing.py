"""A replica's side of routing: which versions requests may reach, and the hold barrier.

`RoutedDataPlane` answers only from the versions the watcher routes (a version loaded for
the next flip stays out of reach until the flip), and reports the cluster's view of a
model's versions. `Gate` wraps the REST app: while a model is held, requests for it wait
(at most `limit_seconds`, then 503) instead of being answered; releasing the hold lets them
through to whatever is routed by then. See `rollout.py` for why this keeps invariant 8.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from loader.base import NotFound, ServingError, Unavailable
from loader.manager.handles import Lease
from loader.manager.harness import VersionStatus
from loader.manager.manager import Manager
from loader.serving.dataplane import DataPlane
from loader.serving.rest.error_answers import error_answer
from loader.serving.rest.targets import model_of, raw_path

REPLICAS_PATH = "/modelwatch/replicas"
_REPLICAS_RAW = REPLICAS_PATH.encode()  # matched as it arrived: an escape names no route


class RoutedDataPlane(DataPlane):
    """The data plane, restricted to the routed versions and reporting the cluster's view."""

    def __init__(self, manager: Manager) -> None:
        super().__init__(manager)
        self._routes: dict[str, frozenset[int]] = {}
        self._cluster: dict[str, tuple[VersionStatus, ...]] = {}

    def route(self, model: str, routed: frozenset[int], status: tuple[VersionStatus, ...]) -> None:
        """From now on, requests for `model` reach `routed` only (one dict store each)."""
        self._cluster[model] = status
        self._routes[model] = routed

    def routed(self, model: str) -> frozenset[int]:
        return self._routes.get(model, frozenset())

    def hold(self, model: str, version: int | None = None, label: str | None = None) -> Lease:
        routed = self.routed(model)
        if label is not None:
            version = self._manager.resolve_label(model, label)
        if version is None:
            if not routed:
                raise NotFound(f"Servable not found for request: Latest({model})")
            version = max(routed)
        elif version not in routed:
            raise NotFound(f"Servable not found for request: Specific({model}, {version})")
        return self._manager.acquire(model, version)

    def status(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """The cluster's view of the routed and incoming versions; this replica's own for
        the versions it has left behind (END, with their errors)."""
        cluster = {s.version: s for s in self._cluster.get(model, ())}
        if label is not None:
            version = self._manager.resolve_label(model, label)
        try:
            local = self._manager.status(model)
        except NotFound:
            local = []
        merged = {s.version: s for s in local if s.version not in cluster} | cluster
        if version is not None:
            if version not in merged:
                raise NotFound(f"Could not find version {version} of model {model}")
            return [merged[version]]
        if not merged:
            raise NotFound(f"Could not find any versions of model {model}")
        return [merged[v] for v in sorted(merged, reverse=True)]


class Gate:
    """The hold barrier in front of a replica's REST app."""

    def __init__(
        self,
        app: ASGIApp,
        limit_seconds: float,
        replicas: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._app = app
        self._limit = limit_seconds
        self._replicas = replicas
        self._held: dict[str, tuple[int | None, asyncio.Event]] = {}

    def hold(self, model: str, flip: int | None) -> None:
        """Hold new requests for `model` (for a flip, or `None`: until it can serve)."""
        held = self._held.get(model)
        if held is None:
            self._held[model] = (flip, asyncio.Event())
        elif held[0] != flip:
            self._held[model] = (flip, held[1])

    def release(self, model: str) -> None:
        held = self._held.pop(model, None)
        if held is not None:
            held[1].set()

    def held(self) -> Mapping[str, int | None]:
        """The held models and the flip each is held for."""
        return {model: flip for model, (flip, _) in self._held.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if raw_path(scope) == _REPLICAS_RAW and self._replicas is not None:
                await _send(send, 200, orjson.dumps(await self._replicas()))
                return
            if self._held:  # nothing to look up while no model is held
                try:
                    await self._admit(model_of(scope))
                except ServingError as error:
                    await _send(send, *error_answer(error))
                    return
        await self._app(scope, receive, send)

    async def _admit(self, model: str | None) -> None:
        held = self._held.get(model) if model is not None else None
        if held is None:
            return
        try:
            await asyncio.wait_for(held[1].wait(), self._limit)
        except TimeoutError:
            raise Unavailable(
                f"model {model} is switching versions across replicas and this replica has "
                f"not been told to go on within {self._limit:g}s; try again"
            ) from None


async def _send(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
