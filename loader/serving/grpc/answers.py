"""How a gRPC call is answered: counted in the metrics, and every `ServingError` (or a
bug) turned into the call's status with TF Serving's code and message (messages over
1,024 characters cut the way TF Serving's ToGRPCStatus cuts them).

`Answerer` does it for both kinds of handler the server runs: blocking ones on the
server's worker threads (`__call__`) and coroutines on its event loop (`answer_async`).
A failure that will pass (an on-demand model still loading) carries gRPC's own retry hint,
the trailer `grpc-retry-pushback-ms`, which clients with a retry policy honour. It also
counts the calls in flight, and once `drain()` is called it answers every new
call UNAVAILABLE at once (a client retries those elsewhere), while those in flight finish.

A call's own deadline is honoured: one that waited past it for a worker thread is answered
DEADLINE_EXCEEDED without running (counted in `modelwatch_requests_expired`), and one on the
event loop is cancelled by gRPC at its deadline, and counted DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import message

from loader.base import Code, DeadlineExceeded, ServingError, Unavailable
from loader.serving.metrics import Metrics

log = logging.getLogger("modelwatch.grpc")

MESSAGE_LIMIT = 1024  # TF Serving's ToGRPCStatus cuts longer messages
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # gRPC's retry design (gRFC A6)
# A call cancelled this close to its deadline was cancelled for it: the client gives up at
# its deadline, which the server learnt a moment after the client set it.
DEADLINE_SLACK_SECONDS = 1.0
Response = TypeVar("Response", bound=message.Message)


def grpc_status(code: Code, text: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and the (cut) message for `code` and `text`."""
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + "...TRUNCATED"
    return grpc.StatusCode[code.name], text


def _failure(api: str, error: Exception, context: grpc.ServicerContext) -> tuple[Code, str]:
    """The status for an exception a handler raised (and its retry hint, in `context`)."""
    if isinstance(error, ServingError):
        log.debug("%s failed: %s", api, error.message)
        if error.retry_after_seconds is not None:
            context.set_trailing_metadata(
                ((RETRY_PUSHBACK, str(error.retry_after_seconds * 1000)),)
            )
        return error.code, error.message
    # A bug: answer like the REST side does, and log it whole.
    log.error("%s failed", api, exc_info=error)
    return Code.INTERNAL, f"Internal error: {type(error).__name__}: {error}"


class Answerer:
    """Runs one call's handler, counts it under its API and model, and answers its
    failure as the call's status."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._in_flight = 0
        self._draining = False

    def drain(self) -> None:
        """From now on, answer every new call UNAVAILABLE."""
        with self._lock:
            self._draining = True

    @property
    def in_flight(self) -> int:
        """Calls being answered now."""
        return self._in_flight

    def _enter(self, context: grpc.ServicerContext | grpc.aio.ServicerContext, model: str) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # it waited past it for a thread
            self._metrics.expire(model)
            raise DeadlineExceeded("Deadline Exceeded")  # gRPC's words for it
        with self._lock:
            if self._draining:
                raise Unavailable("the server is shutting down")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def __call__(
        self,
        context: grpc.ServicerContext,
        api: str,
        model: str,
        handler: Callable[[], Response],
    ) -> Response:
        """Answer a blocking call (on a worker thread)."""
        with self._metrics.request("grpc", api) as outcome:
            outcome.model = model
            try:
                self._enter(context, model)
                try:
                    return handler()
                finally:
                    self._leave()
            except Exception as error:
                outcome.code, text = _failure(api, error, context)
        context.abort(*grpc_status(outcome.code, text))
        raise AssertionError("context.abort returned")  # it raises; this keeps types honest

    async def answer_async(
        self,
        context: grpc.aio.ServicerContext,
        api: str,
        model: str,
        handler: Callable[[], Awaitable[Response]],
    ) -> Response:
        """Answer a call on the event loop. A call the client cancelled (or the server's
        stop cut) is counted as CANCELLED."""
        with self._metrics.request("grpc", api) as outcome:
            outcome.model = model
            try:
                self._enter(context, model)
                try:
                    return await handler()
                finally:
                    self._leave()
            except asyncio.CancelledError:  # by the client, its deadline, or the server's stop
                remaining = context.time_remaining()
                late = remaining is not None and remaining < DEADLINE_SLACK_SECONDS
                outcome.code = Code.DEADLINE_EXCEEDED if late else Code.CANCELLED
                text = None
            except Exception as error:
                outcome.code, text = _failure(api, error, context)
        if text is None:  # nobody is waiting for an answer
            raise asyncio.CancelledError
        await context.abort(*grpc_status(outcome.code, text))
        raise AssertionError("context.abort returned")
