"""The certificate, key and client CA a server presents, re-read when their files change.

cert-manager (or any rotation) rewrites the files under a running server; `ServerTls`
looks at them at most once per `check_interval_seconds`, when a connection asks for the
current certificates, and swaps in the new set only once OpenSSL has accepted it whole: a
half-written or mismatched set keeps the one in use serving, with a rate-limited warning.

Both transports take their certificates from here: REST builds each connection's TLS from
`Certificates.context`, gRPC hands `key`, `chain` and `client_ca` to grpcio's own dynamic
credentials. Standard library only (`ssl`); no TLS of our own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loader.serving.rate_limited_log import RateLimitedLog

log = logging.getLogger("modelwatch.tls")


class TlsError(ValueError):
    """Certificates that cannot be used; the message names the setting at fault."""


@dataclass(frozen=True)
class Pem:
    """PEM text as read, with the name of the setting each part came from (for errors)."""

    key: bytes
    chain: bytes  # the server's certificate, then any intermediates
    client_ca: bytes | None  # None: clients are not asked for a certificate
    key_from: str
    chain_from: str
    client_ca_from: str = ""


@dataclass(frozen=True, eq=False)
class Certificates:
    """One set that OpenSSL accepted, and the server-side context built from it."""

    pem: Pem
    context: ssl.SSLContext  # CERT_REQUIRED against client_ca when there is one


def read_pem_files(
    cert_file: Path, key_file: Path, client_ca_file: Path | None, where: str
) -> Pem:
    """The files of `server.tls` (`where` is its key in the config)."""
    def read(path: Path, key: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TlsError(f"{where}.{key}: {path} cannot be read ({exc.strerror or exc})") from None

    return Pem(
        key=read(key_file, "key_file"), chain=read(cert_file, "cert_file"),
        client_ca=None if client_ca_file is None else read(client_ca_file, "client_ca_file"),
        key_from=f"{where}.key_file ({key_file})", chain_from=f"{where}.cert_file ({cert_file})",
        client_ca_from=f"{where}.client_ca_file ({client_ca_file})",
    )


def check(pem: Pem) -> Certificates:
    """The set as OpenSSL reads it; `TlsError` naming the part that it refuses."""
    _certificates(pem.chain, pem.chain_from)
    if pem.client_ca is not None:
        _certificates(pem.client_ca, pem.client_ca_from)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 and up, OpenSSL's ciphers
    with _readable_files(pem.chain, pem.key) as (chain_path, key_path):
        try:
            context.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as exc:
            raise TlsError(
                f"{pem.key_from}: not an unencrypted PEM private key of the certificate in "
                f"{pem.chain_from} ({_why(exc)})"
            ) from None
    if pem.client_ca is not None:
        context.load_verify_locations(cadata=pem.client_ca.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return Certificates(pem, context)


def _certificates(text: bytes, where: str) -> None:
    """Refuse text with no PEM certificate, or with one OpenSSL cannot read."""
    try:
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        scratch.load_verify_locations(cadata=text.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        reason = _why(exc) if text.strip() else "it is empty"
        raise TlsError(f"{where}: not PEM certificates ({reason})") from None


def _why(error: Exception) -> str:
    """OpenSSL's reason, without the line of CPython's C source that reported it."""
    reason = getattr(error, "reason", None)
    return str(reason) if reason else re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(error))


@contextlib.contextmanager
def _readable_files(*texts: bytes) -> Iterator[list[str]]:
    """Paths OpenSSL can read `texts` from (it loads a key and chain from files only): memory
    files where the system has them, so a key is never written to a disk; else a private
    temporary folder, removed at once."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("modelwatch-tls", 0) for _ in texts]
        try:
            for fd, text in zip(fds, texts):
                os.write(fd, text)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="modelwatch-tls-") as folder:
        paths = [os.path.join(folder, str(i)) for i in range(len(texts))]
        for path, text in zip(paths, texts):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(text)
        yield paths


_Signature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: Sequence[Path]) -> _Signature:
    """What tells a file's new content from its old without reading it (through symlinks,
    so Kubernetes' swap of a Secret volume's `..data` link counts)."""
    def one(path: Path) -> tuple[int, int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    return tuple(one(p) for p in paths)


class ServerTls:
    """The certificates in use, re-read from `paths` by `read` when those files change.

    The constructor reads and checks them (`TlsError` when they cannot serve). `current()`
    is called for each new connection, from any thread; it looks at the files at most once
    per `check_interval_seconds` and never raises: a set that cannot be used is logged (once
    per change of the files, and at most once per interval) and the one in use stays.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        read: Callable[[], Pem],
        *,
        check_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = tuple(paths)
        self._read = read
        self._interval = check_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log)
        self._seen = _signature(self._paths)  # before reading: a change meanwhile is seen later
        self._current = check(read())
        self._next_check = clock() + check_interval_seconds

    @property
    def client_verify(self) -> bool:
        """Whether clients must present a certificate signed by the client CA (fixed at start)."""
        return self._current.pem.client_ca is not None

    def current(self) -> Certificates:
        """The certificates to present now."""
        now = self._clock()
        if now < self._next_check:
            return self._current
        with self._lock:
            if now >= self._next_check:
                self._next_check = now + self._interval
                self._reread()
            return self._current

    def _reread(self) -> None:
        seen = _signature(self._paths)
        if seen == self._seen:
            return
        self._seen = seen  # a failed set is tried again only once its files change again
        try:
            fresh = check(self._read())
        except TlsError as error:
            self._log.warning(
                "tls_reload", "TLS: the changed certificate files cannot be used, the ones "
                "in use stay: %s", error,
            )
            return
        if (fresh.pem.client_ca is None) != (self._current.pem.client_ca is None):
            self._log.warning(
                "tls_reload", "TLS: the changed files %s a client CA; whether clients must "
                "present a certificate is fixed at start, so the ones in use stay",
                "add" if fresh.pem.client_ca is not None else "remove",
            )
            return
        self._current = fresh
        log.info("TLS: new certificates from %s are in use", ", ".join(map(str, self._paths)))
