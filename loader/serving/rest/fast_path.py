"""The fast HTTP path: uvicorn's HTTP/1.1 protocol, with the prediction routes answered
without ASGI.

At 32 clients the event loop is what runs out first, and per request about half of its
time went to the ASGI machinery around the handler: a scope, an Event, a task, the
receive and send messages, two socket writes and a keep-alive timer per response. Here a
`POST` whose raw target is a prediction route (`/v1/models/<name>[/versions/<n> |
/labels/<l>]:predict|classify|regress`, no query, no percent-escape) becomes a
`_FastCycle`: its body is gathered from the parser's callbacks, handed to
`loader.serving.rest.predictions` with a `reply` that writes the whole response (head and
body) at once. Every other request, and everything about connections (parsing errors,
keep-alive, pipelining order, HTTP/1.0, drain on shutdown, the keep-alive timeout), is
uvicorn's own `HttpToolsProtocol` with the limits of
`loader.serving.rest.http_guard.GuardedProtocol`, so the two paths cannot answer a request
differently.

A `_FastCycle` stands where uvicorn keeps its `RequestResponseCycle` (`self.cycle`, the
`pipeline` queue), with the attributes uvicorn's connection code reads there
(`response_complete`, `keep_alive`, `disconnected`). This leans on uvicorn's protocol
internals (written against uvicorn 0.55, pyproject.toml's lower bound);
tests/serving/rest/test_fast_path.py drives every behaviour above over real sockets on
both paths, so a release that changes them fails there, not in production.

Predictions whose body is complete are not run inside the read that completed them but
from one callback per loop turn (`PredictionRoutes.run_soon`): run inside the read, the
first request woke a batch thread that took the interpreter lock between two reads, and
batches at 32 clients shrank from 16 rows to 4.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from loader.base import ServingError
from loader.serving.rest.error_answers import BodyTimeout, body_timeout, too_large
from loader.serving.rest.http_guard import GuardedProtocol
from loader.serving.rest.predictions import PredictionCall, PredictionRoutes
from loader.serving.rest.targets import Target, prediction_target

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RESERVED_BODY_BYTES = 64 * 1024  # a body declared larger, still arriving, reserves first
_DRAIN_READ_SECONDS = 0.1  # between two reads of a refused body
_JSON_HEAD = b"content-type: application/json\r\ncontent-length: "
# A JSON head and binary data (the Open Inference Protocol's binary tensor data).
_BINARY_HEAD = b"inference-header-content-length: %d\r\ncontent-type: application/octet-stream\r\ncontent-length: "


class _FastCycle:
    """One prediction request on a connection, from its headers to its response."""

    __slots__ = (
        "_call", "_chunks", "_deadline", "_declared", "_expect_continue", "_held", "_protocol",
        "_refusal", "_size", "_timer", "disconnected", "keep_alive", "label", "reading", "response_complete",
        "started", "version_text",
    )

    def __init__(
        self,
        protocol: FastPathProtocol,
        target: Target,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        api, model, self.version_text, self.label = target
        self._protocol = protocol
        self._call: PredictionCall = protocol.routes.call(api, model, self._reply)
        self.keep_alive = keep_alive
        self._expect_continue = expect_continue
        self.disconnected = False
        self.response_complete = False
        self.started = False  # its turn to be answered (a pipelined one waits)
        self.reading = True  # the body is still arriving
        self._chunks: list[bytes] = []
        self._size = 0
        self._refusal: ServingError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._declared = 0  # the body's Content-Length
        self._held = 0  # bytes of the decode budget held for the body until answered

    def check_declared_length(self, headers: list[tuple[bytes, bytes]]) -> None:
        limit = self._protocol.routes.max_request_bytes
        for name, value in headers:
            if name == b"content-length":
                if value.isdigit():
                    self._declared = int(value)
                    if self._declared > limit:
                        self._refuse(too_large(limit))
                break
        self._call.read_head(headers)

    def start(self) -> None:
        """The responses before this one are written: this one may be answered."""
        self.started = True
        if self._refusal is not None:
            self._answer_refusal()
        elif self.reading:
            if self._declared > _RESERVED_BODY_BYTES:
                self._protocol.flow.pause_reading()
                self._protocol.routes.spawn(self._reserve_body())
            else:
                self._continue()
        else:
            self._run()

    def _continue(self) -> None:
        if self._expect_continue and not self._protocol.transport.is_closing():
            self._protocol.transport.write(_CONTINUE)

    async def _reserve_body(self) -> None:
        """Reserve what the declared body will take in the decode budget before reading on
        (reading paused meanwhile, at most the budget's wait), so bodies being read are
        bounded with everything being decoded and one with no room is refused (429), its
        bytes dropped, never held: else many connections could each hold a 64 MiB body
        while it waited to be refused. The call counts it as its own (`prepaid`)."""
        routes = self._protocol.routes
        try:
            held = await routes.reserve_bytes(*self._call.body_reservation(self._declared))
        except ServingError as error:
            if self.keep_alive:
                self._refuse(error)
            else:  # answered once the body is read: closing with its bytes still coming
                self._refusal = error  # would reset the connection, the answer lost with it
        else:
            if self.response_complete:  # the client left meanwhile
                routes.budget.release(held)
                return
            self._held = self._call.prepaid = held
            self._continue()
        if not self._protocol.transport.is_closing():
            self._protocol.flow.resume_reading()

    def _release_body(self) -> None:
        if self._held:
            self._protocol.routes.budget.release(self._held)
            self._held = 0

    def feed(self, chunk: bytes) -> None:
        if self._refusal is not None or self.response_complete:
            return  # the rest of a refused body is read and dropped
        self._size += len(chunk)
        if self._size > self._protocol.routes.max_request_bytes:
            self._refuse(too_large(self._protocol.routes.max_request_bytes))
            return
        self._chunks.append(chunk)
        if self._timer is not None:
            self._deadline = self._protocol.loop.time() + self._protocol.routes.body_timeout_seconds

    def complete(self) -> None:
        self.reading = False
        self._stop_timer()
        if self.started and not self.response_complete:
            if self._refusal is None:
                self._run()
            else:  # a refusal kept until the body was read (`_reserve_body`)
                self._answer_refusal()
        elif self.response_complete and not self.disconnected:
            self._protocol.idle_again()  # answered before its body was in: idle from now

    def dropping(self) -> bool:
        """Whether the body still arriving is refused, read only to be dropped."""
        return self.reading and (self._refusal is not None or self.response_complete)

    def watch_body(self) -> None:
        """The body is still arriving after a read: give up on it if it stalls."""
        if self._timer is None:
            loop = self._protocol.loop
            seconds = self._protocol.routes.body_timeout_seconds
            self._deadline = loop.time() + seconds
            self._timer = loop.call_at(self._deadline, self._check_stalled)

    def lost(self) -> None:
        """The connection closed."""
        self._stop_timer()
        self._release_body()
        if self.response_complete:
            return
        self.disconnected = True
        if self.reading or self._refusal is not None or not self.started:
            self.response_complete = True
            self._call.cancel()  # nobody to answer, and no bug

    def _run(self) -> None:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._protocol.routes.run_soon(self._call, self.version_text, self.label, body)

    def _refuse(self, error: ServingError) -> None:
        self._refusal = error
        self._chunks = []
        if self.started:
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        self._stop_timer()
        if self._refusal is not None:
            self._call.refuse(self._refusal)

    def _check_stalled(self) -> None:
        self._timer = None
        if not self.reading or self.response_complete:
            return
        loop = self._protocol.loop
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check_stalled)
            return
        self._refuse(body_timeout(self._protocol.routes.body_timeout_seconds, self._size))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reply(
        self, status: int, answer: bytes, retry_after: int | None, head_length: int | None
    ) -> None:
        """Write the whole response at once; then the connection's next request."""
        self.response_complete = True
        self._release_body()
        protocol = self._protocol
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            return
        # After a body timeout what is left of the body would be read as a next request.
        close = not self.keep_alive or isinstance(self._refusal, BodyTimeout)
        content = _JSON_HEAD if head_length is None else _BINARY_HEAD % head_length
        if close or retry_after is not None:
            head = b"%b%b%b%d\r\n%b%b\r\n" % (
                STATUS_LINE[status], protocol.routes.cors_head, content, len(answer),
                b"connection: close\r\n" if close else b"",
                b"" if retry_after is None else b"retry-after: %d\r\n" % retry_after,
            )
        else:  # the usual answer, in fewer steps
            head = b"".join((
                STATUS_LINE[status], protocol.routes.cors_head, content,
                b"%d\r\n\r\n" % len(answer),
            ))
        if len(answer) < 65536:
            transport.write(head + answer)
        else:  # not worth a copy
            transport.writelines((head, answer))
        if close:
            transport.close()
        if protocol.flow.write_paused:  # the client reads slowly: no next request until it has
            protocol.answer_next_once_drained()
        else:
            protocol.on_response_complete()


class FastPathProtocol(GuardedProtocol):
    """uvicorn's protocol, with prediction requests taken as `_FastCycle`s (see above).

    Built by uvicorn for each connection; `routes` and `guard` are bound with functools.partial.
    """

    def __init__(self, *args: Any, routes: PredictionRoutes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes = routes
        self._next_once_drained = False
        self._idle_since: float | None = None  # when the last response left, if no byte came since

    def answer_next_once_drained(self) -> None:
        """A response filled the write buffer: read and answer the next request only once
        the client has read it down, so that a client pipelining requests without reading
        the answers holds no more than a buffer of them (uvicorn's ASGI path waits in
        `send` for the same reason)."""
        self._next_once_drained = True

    def on_response_complete(self) -> None:
        # uvicorn's, except for the keep-alive timeout: it arms a timer per response, which
        # the next read cancels (2.6 us a request); here one timer per idle spell looks at
        # when the connection last went idle, and closes it `timeout_keep_alive` after.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_at(
                self._idle_since + self.timeout_keep_alive, self._check_idle
            )

    def idle_again(self) -> None:
        """The body of a request answered before it arrived is in: the keep-alive timeout
        counts from now (the reads of that body had stopped it)."""
        if self.transport.is_closing() or self.pipeline:
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_at(
                self._idle_since + self.timeout_keep_alive, self._check_idle
            )

    def drain_seconds(self) -> float:
        # A refused body is read slowly: one read (up to 256 KiB) every DRAIN_READ_SECONDS,
        # so that bodies the server will not use cost its loop little, however many come at
        # once, and their senders still get their answer (closing instead would reset the
        # connection under a sender still sending, and the answer would be lost with it).
        cycle: object = self.cycle
        return _DRAIN_READ_SECONDS if type(cycle) is _FastCycle and cycle.dropping() else 0.0

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # a read: busy again (the timer, if any, sees it when it fires)

    def _check_idle(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None or self.transport.is_closing():
            return
        deadline = self._idle_since + self.timeout_keep_alive
        if self.loop.time() >= deadline:
            self.timeout_keep_alive_handler()
        else:
            self.timeout_keep_alive_task = self.loop.call_at(deadline, self._check_idle)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._next_once_drained:
            self._next_once_drained = False
            self.on_response_complete()

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; it is built in on_headers_complete instead,
        # and only when the request turns out not to be a prediction.
        self._begin_head()
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle: object = self.cycle  # a RequestResponseCycle or a _FastCycle
        if type(cycle) is _FastCycle and cycle.reading and not cycle.response_complete:
            cycle.watch_body()

    def on_headers_complete(self) -> None:
        self._end_head()
        parser = self.parser
        target = None
        if parser.get_method() == b"POST" and not parser.should_upgrade() and not self.misdirected():
            target = prediction_target(self.url)
        if target is None or self.limit_concurrency is not None:
            url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
            HttpToolsProtocol.on_message_begin(self)  # the scope; the head's counting goes on
            self.url, self.expect_100_continue = url, expect_100_continue
            self.headers = self.scope["headers"] = headers
            self._headers_complete_asgi()
            return
        http_version = parser.get_http_version()
        cycle = _FastCycle(
            self, target, http_version != "1.0" and parser.should_keep_alive(),
            self.expect_100_continue,
        )
        cycle.check_declared_length(self.headers)
        previous, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            cycle.start()
        else:  # pipelined: answered after the responses before it
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is _FastCycle:
            cycle.start()
        else:
            super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._in_head = False  # after a chunk's size line
        cycle: object = self.cycle  # a RequestResponseCycle or a _FastCycle
        if type(cycle) is _FastCycle:
            cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_open = self._in_head = False
        cycle: object = self.cycle  # a RequestResponseCycle or a _FastCycle
        if type(cycle) is _FastCycle:
            cycle.complete()
        else:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle: object = self.cycle
        if isinstance(cycle, _FastCycle):
            cycle.lost()
            self.cycle = None  # type: ignore[assignment]  # uvicorn's part: no cycle to tell
        queued: object
        for queued, _ in self.pipeline:
            if isinstance(queued, _FastCycle) and queued is not cycle:
                queued.lost()
        super().connection_lost(exc)
