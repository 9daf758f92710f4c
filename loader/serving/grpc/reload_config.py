"""How a gRPC HandleReloadConfigRequest is applied: one at a time, within its caller's
deadline.

TF Serving's ServerCore::ReloadConfig applies the config and then waits, with no bound,
for the new models to become available, its handler thread held for as long as a model
does not load. Here the wait ends at the call's deadline: the call answers
DEADLINE_EXCEEDED (which the client gets anyway) and gives its worker back, while the
config stays applied and the models go on loading (their sources keep watching).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from loader.base import Code, InvalidArgument, ServingError

ReloadFn = Callable[[model_server_config_pb2.ModelServerConfig, float | None], None]
"""Serve exactly the models of this ModelConfigList from now on, blocking until its new
models are available, raising `ServingError` if not (`InvalidArgument` for a config that
does not validate). The second argument is how long the caller still waits (None: no
deadline); past it the call raises DEADLINE_EXCEEDED with the config applied and its
models still loading."""


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until a `time.monotonic()` deadline (0 once past); None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class ConfigReload:
    """Applies reload requests through `reload`, one at a time and each whole."""

    def __init__(self, reload: ReloadFn | None) -> None:
        self._reload = reload
        self._lock = threading.Lock()

    def __call__(
        self, request: model_management_pb2.ReloadConfigRequest, deadline: float | None
    ) -> model_management_pb2.ReloadConfigResponse:
        """Apply the request's config and wait for its new models, at most until
        `deadline` (monotonic seconds; None: the reload function's own bound)."""
        if self._reload is None:
            raise ServingError(
                "this server was started without a way to reload its models",
                Code.UNIMPLEMENTED,
            )
        if request.config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        left = seconds_left(deadline)
        if not self._lock.acquire(timeout=-1 if left is None else left):
            raise ServingError(
                "the call's deadline passed while another reload was applied",
                Code.DEADLINE_EXCEEDED,
            )
        try:
            self._reload(request.config, seconds_left(deadline))
        finally:
            self._lock.release()
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = Code.OK.value
        return response
