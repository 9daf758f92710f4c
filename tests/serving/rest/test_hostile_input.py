"""Hostile requests against a real REST server serving TF Serving's half_plus_two.

One server for the module: the REST adapter on 127.0.0.1 over a real manager that loads
real SavedModels (the TF1 one through a session, the TF2 one through `tf.saved_model.load`).
Whatever arrives (any JSON, any bytes, near-valid requests, odd paths), the answer is never a
5xx, every error is `{"error": "<text>"}`, and the server still predicts correctly after.

Not repeated here: an S3 object key with `../` under a version prefix is refused before
anything is written (tests/sources/test_s3_fetch.py: test_an_unsafe_key_is_refused).
"""

from __future__ import annotations

import base64
import gc
import http.client
import json
import logging
import shutil
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.base import Servable, VersionRef
from loader.manager.manager import Manager, ModelSpec
from loader.serving.dataplane import DataPlane
from loader.serving.metrics import Metrics
from loader.serving.rest.app import RestApi
from loader.serving.rest.server import RestServer, bind
from policies.selection import Latest
from policies.transition import availability_preserving
from tests.daemon_process import wait_until

LIMIT = 12 * 1024 * 1024  # server.max_request_bytes here: 10 MB bodies fit, 13 MB do not
VERSION = 123
TF1, TF2 = "half_plus_two", "half_plus_two_tf2"
SIGNATURES = ["serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2",
              "regress_x2_to_y3", "classify_x2_to_y3", "__saved_model_init_op", "", "nope"]
SETTINGS = settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- the shared server ------------------------------------------------------------------

@dataclass
class Server:
    port: int
    client: httpx.Client
    manager: Manager
    metrics: Metrics


def _load(model: str, version: int, ref: VersionRef) -> Servable:
    from loader.servables.savedmodel import load_saved_model

    return load_saved_model(ref.uri)


# The threads conftest's leak check ignores: started once per process by libraries.
_LIBRARY_THREADS = ("ThreadPoolExecutor", "pydevd", "asyncio_", "grpc", "Dummy-")
_REQUEST_WORKER = "AnyIO worker thread"  # the shared server's; they idle between tests


def _threads(*, workers: bool = True) -> set[threading.Thread]:
    return {
        t for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith(_LIBRARY_THREADS)
        and (workers or t.name != _REQUEST_WORKER)
    }


def _wait_for_threads_to_end(threads: set[threading.Thread], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while threads and time.monotonic() < deadline:
        for thread in threads:
            thread.join(timeout=0.1)
        threads = {t for t in threads if t.is_alive()}
    return sorted(t.name for t in threads)


@pytest.fixture(scope="module")
def server(tfserving_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    before = _threads()
    repo = tmp_path_factory.mktemp("hostile-models")
    for name, folder in ((TF1, "saved_model_half_plus_two_cpu"),
                         (TF2, "saved_model_half_plus_two_tf2_cpu")):
        shutil.copytree(tfserving_testdata / folder / "00000123", repo / name / str(VERSION))
    manager = Manager(_load, load_retries=0)
    manager.set_models([
        ModelSpec(name, Latest(1), availability_preserving, {"stable": VERSION})
        for name in (TF1, TF2)
    ])
    for name in (TF1, TF2):
        manager.on_versions(name, {VERSION: VersionRef(str(repo / name / str(VERSION)), "fp")})
    assert manager.wait_until(
        lambda: all(s.state == "AVAILABLE" for n in (TF1, TF2) for s in manager.status(n)), 120
    ), [manager.status(n) for n in (TF1, TF2)]
    metrics = Metrics()
    api = RestApi(DataPlane(manager), metrics, max_request_bytes=LIMIT)
    rest = RestServer(api.app, bind("127.0.0.1", 0))
    rest.start()
    assert rest.wait_started(30)
    client = httpx.Client(base_url=f"http://127.0.0.1:{rest.port}", timeout=60)
    yield Server(rest.port, client, manager, metrics)
    client.close()
    rest.stop()
    rest.join(30)
    manager.stop()
    manager.join()
    leaked = _wait_for_threads_to_end(_threads() - before, 15.0)
    assert not leaked, f"the shared server left threads running: {leaked}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """conftest's check, except for the shared server's request workers, which idle between
    tests by design; the `server` fixture checks that they end with it."""
    before = _threads()
    yield
    leaked = _wait_for_threads_to_end(_threads(workers=False) - before, 5.0)
    assert not leaked, f"threads left running: {leaked}"


# --- checking answers ---------------------------------------------------------------------

def check_answer(status: int, content_type: str | None, body: bytes, what: Any) -> Any:
    """No 5xx; JSON always; an error is exactly {"error": "<text>"}. Returns the document."""
    assert status < 500, (what, status, body[:2000])
    assert content_type == "application/json", (what, status, content_type, body[:500])
    document = json.loads(body)  # Python's parser takes NaN and Infinity, as clients do
    if status != 200:
        assert isinstance(document, dict) and set(document) == {"error"}, (what, document)
        assert isinstance(document["error"], str) and document["error"], (what, document)
    return document


def post(server: Server, target: str, body: bytes, **headers: str) -> tuple[int, Any]:
    response = server.client.post(target, content=body, headers=headers)
    document = check_answer(
        response.status_code, response.headers.get("content-type"), response.content,
        (target, body[:300]),
    )
    return response.status_code, document


def raw_request(server: Server, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    """A request whose target goes out byte for byte (httpx would normalize `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, target, body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    document = check_answer(response.status, response.getheader("content-type"), content,
                            (method, target))
    return response.status, document


def assert_still_serving(server: Server) -> None:
    for model in (TF1, TF2):
        response = server.client.post(f"/v1/models/{model}:predict",
                                      json={"instances": [1.0, 2.0, 5.0]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert server.client.get(f"/v1/models/{TF1}").json()["model_version_status"][0]["state"] \
        == "AVAILABLE"


def errors_counted(server: Server, status: str) -> float:
    total = 0.0
    for line in server.metrics.exposition().decode().splitlines():
        if line.startswith("modelwatch_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- strategies -----------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc80", "\udcff", "\udfff"])
TEXT = st.text(st.characters() | SURROGATES, max_size=8)
KEYS = st.sampled_from(["instances", "inputs", "examples", "context", "signature_name", "x",
                        "x2", "b64"]) | TEXT
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
    | st.sampled_from([0, 1, -1, 2**63, 2**64, -(2**63) - 1, 1e308, 3.5e38, 65505.0])
)
B64 = st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=12)) \
    | st.builds(lambda t: {"b64": t}, TEXT)
JSON_TREES = st.recursive(
    SCALARS | B64,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)
LEAVES = st.floats() | st.integers(-(2**65), 2**65) | st.booleans() | TEXT | B64 | st.none()


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    """Nested lists of one leaf kind, sometimes ragged, sometimes mixed."""
    shape = draw(st.lists(st.integers(0, 3), max_size=4))
    leaf = draw(st.sampled_from([st.floats(), st.integers(-(2**65), 2**65), st.booleans(),
                                 TEXT, B64, LEAVES]))

    def build(dims: list[int]) -> Any:
        if not dims:
            return draw(leaf)
        size = dims[0]
        if size:  # now and then one list is a little longer or shorter: ragged
            size += draw(st.sampled_from([0, 0, 0, 1, -1]))
        return [build(dims[1:]) for _ in range(size)]

    return build(shape)


EXAMPLES = st.lists(
    st.dictionaries(st.sampled_from(["x", "x2", "y"]) | TEXT, LEAVES | st.lists(LEAVES, max_size=3),
                    max_size=3) | JSON_TREES,
    max_size=3,
)
SIGNATURE_NAMES = st.just({}) | st.builds(
    lambda s: {"signature_name": s}, st.sampled_from(SIGNATURES) | JSON_TREES
)
NEAR_VALID = st.one_of(
    # predict: a tensor, an object of tensors, or a list of objects, under either key
    st.builds(lambda key, value, sig: {key: value, **sig},
              st.sampled_from(["instances", "inputs"]),
              tensors() | st.dictionaries(st.sampled_from(["x", "y", "inputs", "b64"]) | TEXT,
                                          tensors(), max_size=3)
              | st.lists(st.dictionaries(st.sampled_from(["x", "y"]), tensors(), max_size=2),
                         max_size=3),
              SIGNATURE_NAMES),
    # classify and regress: examples and context
    st.builds(lambda examples, context, sig: {"examples": examples, **context, **sig},
              EXAMPLES,
              st.just({}) | st.builds(lambda c: {"context": c}, JSON_TREES),
              SIGNATURE_NAMES),
)
TARGETS = st.sampled_from([
    f"/v1/models/{model}{where}:{verb}"
    for model in (TF1, TF2)
    for where in ("", f"/versions/{VERSION}", "/labels/stable")
    for verb in ("predict", "classify", "regress")
])


def encode(document: Any, ascii_only: bool) -> bytes:
    """JSON with NaN/Infinity literals; lone surrogates escaped, or as raw (invalid) UTF-8."""
    return json.dumps(document, allow_nan=True, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )


# --- properties -------------------------------------------------------------------------------

def test_any_json_document_gets_a_json_answer_and_never_a_5xx(server):
    @SETTINGS
    @given(TARGETS, JSON_TREES, st.booleans())
    def check(target: str, document: Any, ascii_only: bool) -> None:
        post(server, target, encode(document, ascii_only))

    check()
    assert_still_serving(server)


def test_near_valid_requests_get_a_json_answer_and_never_a_5xx(server):
    @SETTINGS
    @given(TARGETS, NEAR_VALID, st.booleans())
    def check(target: str, document: Any, ascii_only: bool) -> None:
        post(server, target, encode(document, ascii_only))

    check()
    assert_still_serving(server)


VALID_BODIES = [
    b'{"instances": [1.0, 2.0]}', b'{"inputs": {"x": [[1.0]]}}',
    b'{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}',
    b'{"signature_name": "regress_x_to_y", "examples": [{"x": [2.0]}], "context": {"y": "a"}}',
]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid body with bytes cut, replaced or inserted."""
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["cut", "replace", "insert"]))
        chunk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
            [b"NaN", b"-Infinity", b"[", b"{", b'"', b"\\u", b"\\ud800", b"\xff", b"\x00", b"1e999"]
        ))
        if action == "cut":
            del body[at:at + len(chunk)]
        elif action == "replace":
            body[at:at + len(chunk)] = chunk
        else:
            body[at:at] = chunk
    return bytes(body)


def test_any_bytes_get_a_json_answer_and_never_a_5xx(server):
    @SETTINGS
    @given(TARGETS, st.binary(max_size=300) | mangled())
    def check(target: str, body: bytes) -> None:
        post(server, target, body)

    check()
    assert_still_serving(server)


# Path segments: the real ones, traversal attempts, percent-encodings and anything else.
SEGMENTS = st.sampled_from([
    TF1, TF2, TF1.upper(), "versions", "labels", "metadata", str(VERSION), "00000123", "stable",
    "..", ".", "%2e%2e", "%2E%2E%2F", "..%2F..%2Fetc", "..%2f..%2f..%2fetc%2fpasswd", "%2F",
    "%00", "%ff", "%C3%A9", "%", "%zz", "~", "-1", "99999999999999999999", "1" * 5000,
    "\u0663", "a:b", ":predict", "", "etc", "passwd",
]) | st.text(max_size=10).map(lambda s: urllib.parse.quote(s, safe=""))
SUFFIXES = st.sampled_from(["", ":predict", ":classify", ":regress", ":PREDICT", "/metadata",
                            ":explain", ":", "/", "?x=1", "/metadata?y=%2e%2e"])
PREFIXES = st.sampled_from(["/v1/models", f"/v1/models/{TF1}", "/V1/Models", "/v1", "",
                            f"/v1/models/{TF1}/versions/{VERSION}", f"/v1/models/{TF2}/labels"])


def _target(prefix: str, segments: list[str], suffix: str) -> str:
    target = "/".join([prefix, *segments]) + suffix
    target = urllib.parse.quote(target, safe="/%:?=~!$&'()*+,;@")
    return target if target.startswith("/") else "/" + target


TRAVERSAL_MARKS = ("passwd", "/etc", "mw-outside")


class FileAccess:
    """Records file-system audit events whose arguments name a path outside the server's
    business while `watching` (an audit hook cannot be removed, so it stays, idle)."""

    EVENTS = ("open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir",
              "os.rmdir", "os.chdir", "os.symlink", "os.truncate", "shutil.rmtree",
              "shutil.copyfile", "shutil.move")
    watching = False
    seen: list[tuple[str, str]] = []
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.watching and event in cls.EVENTS:
            text = " ".join(str(a) for a in args)
            if any(mark in text for mark in TRAVERSAL_MARKS):
                cls.seen.append((event, text))

    @classmethod
    def watch(cls, tmp_path: Path) -> type[FileAccess]:
        """Start recording, after checking that the hook does see a marked file opened."""
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.seen = []
        cls.watching = True
        (tmp_path / "mw-outside-probe").write_text("")
        assert cls.seen, "the audit hook should see a marked file being opened"
        cls.seen = []
        return cls


def test_any_path_gets_a_json_answer_and_never_touches_the_file_system(server, tmp_path):
    access = FileAccess.watch(tmp_path)
    try:
        @SETTINGS
        @given(st.sampled_from(["GET", "POST"]), PREFIXES, st.lists(SEGMENTS, max_size=4),
               SUFFIXES)
        def check(method: str, prefix: str, segments: list[str], suffix: str) -> None:
            raw_request(server, method, _target(prefix, segments, suffix),
                        b'{"instances": [1.0]}' if method == "POST" else b"")

        check()
    finally:
        access.watching = False
    assert access.seen == []
    assert_still_serving(server)


@pytest.mark.parametrize("target", [
    "/v1/models/..%2F..%2Fetc",
    "/v1/models/..%2F..%2F..%2F..%2Fetc%2Fpasswd/metadata",
    "/v1/models/..%2F..%2Fmw-outside:predict",
    "/v1/models/../../etc/passwd",
    "/v1/models/%2e%2e/%2e%2e/etc/passwd:predict",
    f"/v1/models/{TF1}/versions/..%2F..%2Fetc",
    f"/v1/models/{TF1}/labels/..%2F..%2Fetc:predict",
    f"/v1/models/{TF1}/labels/..%2F..%2Fetc",
    "/v1/models/..%5C..%5Cetc%5Cpasswd",
    "/v1/models/%2Fetc%2Fpasswd",
])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_path_traversal_in_names_is_refused_without_touching_the_file_system(
    server, tmp_path, method, target
):
    access = FileAccess.watch(tmp_path)
    try:
        status, document = raw_request(server, method, target,
                                       b'{"instances": [1.0]}' if method == "POST" else b"")
    finally:
        access.watching = False
    assert status in (400, 404), document
    assert access.seen == []


# --- specific cases ---------------------------------------------------------------------------

P = f"/v1/models/{TF1}:predict"


def test_a_wrong_dtype_is_a_400_naming_the_input_or_the_value(server):
    status, document = post(server, P, b'{"instances": [{"x": ["one"]}]}')
    assert status == 400
    assert "key: x" in document["error"] and "is not of expected type: float" in document["error"]
    # The columnar form names the value and the dtype, not the input (as TF Serving).
    status, document = post(server, P, b'{"inputs": {"x": [["one"]]}}')
    assert (status, document) == (400, {
        "error": 'JSON Value: "one" Type: String is not of expected type: float'
    })
    status, document = post(server, P, b'{"inputs": {"y": [[1.0]]}}')
    assert (status, document) == (400, {"error": "Missing named input: x in 'inputs' object."})


def test_a_wrong_shape_is_a_400(server):
    status, document = post(server, P, b'{"instances": [[1.0], [1.0, 2.0]]}')
    assert status == 400 and "Expecting tensor size: 1 but got: 2" in document["error"]
    status, document = post(server, P, b'{"inputs": {"x": [[1.0, 2.0], [3.0]]}}')
    assert (status, document) == (400, {
        "error": "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    })


def test_bodies_over_the_limit_are_a_413(server):
    too_big = b'{"instances": [1.0], "pad": "' + b"x" * LIMIT + b'"}'
    status, document = post(server, P, too_big)
    assert status == 413 and f"({LIMIT} bytes)" in document["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while it streams
        yield b'{"instances": [1.0], "pad": "'
        for _ in range(13):
            yield b"x" * (1024 * 1024)

    response = server.client.post(P, content=chunks())
    assert response.status_code == 413
    check_answer(response.status_code, response.headers["content-type"], response.content, "chunked")
    assert_still_serving(server)


def test_nan_and_infinity_literals_are_accepted_like_tf_serving(server):
    for target in (P, f"/v1/models/{TF2}:predict"):
        response = server.client.post(target, content=b'{"instances": [NaN, Infinity, -Infinity]}')
        assert response.status_code == 200, response.text
        assert response.content == b'{"predictions":[NaN,Infinity,-Infinity]}'
    status, document = post(server, P, b'{"inputs": {"x": [[NaN], [1e999]]}}')
    assert status == 400 and "Number too big" in document["error"]


@pytest.mark.parametrize("body", [
    b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"inputs": {"x": ' + b"[" * 100_000 + b"1.0" + b"]" * 100_000 + b"}}",
    b'{"instances": ' + b"[" * 100_000,
    b'{"signature_name": "classify_x_to_y", "examples": [{"x": ' + b"[" * 100_000 + b"}]}",
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    b'{"instances": [NaN], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"inputs": ' + b"[" * 70 + b"1.0" + b"]" * 70 + b"}",
], ids=["lists", "inputs", "unclosed", "examples", "objects", "nan-fallback", "rank-70"])
def test_very_deep_nesting_is_a_400(server, body):
    status, document = post(server, P, body)
    assert status == 400, document
    assert document["error"].startswith(("JSON Parse error", "JSON list nested")), document


def test_a_huge_declared_content_length_is_refused_before_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {P} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**15}\r\n\r\n".encode() + b'{"in'
        )
        answer = _read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"server.max_request_bytes" in body
    assert_still_serving(server)


def _hang_up_mid_body(server: Server) -> bytes:
    """Declare a 1 MB body, send a few bytes, close our side; what the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {P} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000000\r\n\r\n".encode() + b'{"instances": [1.0'
        )
        sock.shutdown(socket.SHUT_WR)  # the rest of the declared body never comes
        answer = _read_response(sock)
    # The request has been dealt with once it is no longer in flight.
    wait_until(lambda: 'modelwatch_requests_in_flight{transport="rest"} 0.0'
               in server.metrics.exposition().decode(), 30, "the request to end")
    return answer


def test_a_client_that_hangs_up_mid_body_leaves_the_server_serving(server):
    assert not _hang_up_mid_body(server).startswith(b"HTTP/1.1 5")
    assert_still_serving(server)


def test_a_client_that_hangs_up_mid_body_is_not_counted_as_a_server_error(server, caplog):
    internal_before = errors_counted(server, "INTERNAL")
    with caplog.at_level(logging.ERROR, logger="modelwatch"):
        _hang_up_mid_body(server)
    assert [r.getMessage() for r in caplog.records] == []
    assert errors_counted(server, "INTERNAL") == internal_before


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
            break
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


# --- memory -----------------------------------------------------------------------------------

def resident_bytes() -> int:
    """This process's resident memory (VmRSS), from /proc (psutil is not a dependency)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        pytest.skip("needs /proc/self/status to read the resident memory")
    (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024  # "VmRSS:  123456 kB"


def test_memory_stays_bounded_over_200_bodies_of_10_mb(server):
    """200 bodies of 10 MB (2 GB in all, under the 12 MB limit): the server's resident
    memory after them, and a gc, stays within a few bodies of where it started.

    Reliable because each 10 MB body (and its parsed 10 MB string) is one large allocation,
    which glibc's malloc serves with mmap and gives back to the OS when freed; a leak of one
    body per request would show as 2 GB. The server runs in this process, so this is its RSS.
    """
    pad = b"x" * (10 * 1024 * 1024 - 64)
    bodies = [
        b'{"instances": [1.0, 2.0], "pad": "' + pad + b'"}',  # answered 200
        b'{"instances": "' + pad + b'"}',  # refused 400 (the value is quoted in the error)
        b'{"signature_name": "' + pad + b'", "instances": [1.0]}',  # 400 quoting all 10 MB
    ]

    def send(count: int) -> None:
        for i in range(count):
            body = bodies[i % len(bodies)]
            response = server.client.post(P, content=body)
            assert response.status_code == (200 if body is bodies[0] else 400), response.text[:300]

    send(15)  # warm up: the allocator and the connection reach their steady state
    gc.collect()
    start = resident_bytes()
    send(200)
    gc.collect()
    grown = resident_bytes() - start
    assert grown < 150 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MB over 200 requests"
    assert_still_serving(server)


# --- bugs these tests found, kept as regression tests ----------------------------------------

@pytest.mark.parametrize("body", [
    b'{"signature_name": "\\ud800", "instances": [1.0]}',  # an escaped lone surrogate
    b'{"signature_name": "\x80", "instances": [1.0]}',  # a byte that is not UTF-8
])
def test_client_text_that_is_not_unicode_quoted_in_an_error_is_a_400(server, body):
    response = server.client.post(P, content=body)
    assert response.status_code == 400, response.text
    assert "not found in signature def" in response.json()["error"]


@pytest.mark.parametrize(("verb", "body"), [
    ("classify", b'{"signature_name": "classify_x_to_y", "examples": [{"\\ud800": 1.0}]}'),
    ("classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x\xff": 1.0}]}'),
    ("regress",
     b'{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}], "context": {"\\udc80": 1}}'),
])
def test_a_feature_name_that_is_not_utf8_is_a_400(server, verb, body):
    response = server.client.post(f"/v1/models/{TF1}:{verb}", content=body)
    assert response.status_code == 400, response.text


def test_input_bytes_quoted_in_a_tf1_error_are_a_400(server):
    body = b'{"signature_name": "regress_x_to_y", "instances": [{"b64": "////"}]}'
    response = server.client.post(P, content=body)
    assert response.status_code == 400, response.text
    assert "Could not parse example input" in response.json()["error"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_path_with_an_encoded_newline_gets_a_json_error(server, method):
    status, document = raw_request(server, method, f"/v1/models/{TF1}%0A:predict",
                                   b'{"instances": [1.0]}')
    assert status in (400, 404) and "error" in document
