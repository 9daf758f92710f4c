"""The certificates a server presents (loader/serving/tls.py): each part OpenSSL refuses is
named, and files rewritten under a running server are taken once whole and usable, the
set in use staying meanwhile."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trustme

from loader.serving.tls import Pem, ServerTls, TlsError, check, read_pem_files
from tests.certificates import serial, write_leaf


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def files(tmp_path: Path, ca: trustme.CA, with_client_ca: bool = False) -> tuple[Path, ...]:
    cert, key, client_ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    write_leaf(ca.issue_cert("127.0.0.1"), cert, key)
    ca.cert_pem.write_to_path(str(client_ca))
    return cert, key, client_ca if with_client_ca else None


def watch(paths: tuple[Path, ...], clock: Clock) -> ServerTls:
    cert, key, client_ca = paths
    return ServerTls(
        [p for p in paths if p is not None],
        lambda: read_pem_files(cert, key, client_ca, "server.tls"), clock=clock,
    )


def served_serial(tls: ServerTls) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(tls.current().pem.chain).serial_number


def test_a_good_set_serves_and_a_client_ca_asks_clients_for_certificates(tmp_path, ca):
    plain = watch(files(tmp_path, ca), Clock())
    assert not plain.client_verify
    mutual = watch(files(tmp_path, ca, with_client_ca=True), Clock())
    assert mutual.client_verify
    assert mutual.current().context.verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize(("broken", "text", "named"), [
    ("tls.crt", None, "server.tls.cert_file: {dir}/tls.crt cannot be read (No such file"),
    ("tls.key", None, "server.tls.key_file: {dir}/tls.key cannot be read (No such file"),
    ("ca.crt", None, "server.tls.client_ca_file: {dir}/ca.crt cannot be read (No such file"),
    ("tls.crt", b"", "server.tls.cert_file ({dir}/tls.crt): not PEM certificates (it is empty)"),
    ("tls.crt", b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
     "server.tls.cert_file ({dir}/tls.crt): not PEM certificates"),
    ("tls.key", b"not a key", "server.tls.key_file ({dir}/tls.key): not an unencrypted PEM "
     "private key of the certificate in server.tls.cert_file ({dir}/tls.crt)"),
    ("ca.crt", b"garbage", "server.tls.client_ca_file ({dir}/ca.crt): not PEM certificates"),
])
def test_each_part_that_cannot_serve_is_named(tmp_path, ca, broken, text, named):
    paths = files(tmp_path, ca, with_client_ca=True)
    if text is None:
        (tmp_path / broken).unlink()
    else:
        (tmp_path / broken).write_bytes(text)
    with pytest.raises(TlsError) as error:
        watch(paths, Clock())
    assert str(error.value).startswith(named.format(dir=tmp_path)), error.value


def test_a_key_of_another_certificate_is_named(tmp_path, ca):
    cert, key, _ = files(tmp_path, ca)
    key.write_bytes(ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    with pytest.raises(TlsError, match="KEY_VALUES_MISMATCH"):
        check(read_pem_files(cert, key, None, "server.tls"))


def test_rotated_files_serve_once_whole_and_the_old_set_stays_until_then(tmp_path, ca, caplog):
    clock = Clock()
    paths = files(tmp_path, ca)
    cert, key, _ = paths
    tls = watch(paths, clock)
    first = tls.current()
    old = served_serial(tls)

    # Half written: the new certificate without its key. It cannot serve; the old set stays,
    # and the warning says so once (not again at each look while the files stay as they are).
    new = ca.issue_cert("127.0.0.1")
    write_leaf(new, cert, tmp_path / "new.key")
    with caplog.at_level(logging.WARNING, "modelwatch.tls"):
        clock.now += 1.0
        assert tls.current() is first
        clock.now += 1.0
        assert tls.current() is first
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the ones in use stay" in warnings[0] and "server.tls.key_file" in warnings[0]

    # The key arrives: taken at the next look, not before (at most once per interval).
    (tmp_path / "new.key").replace(key)
    clock.now += 0.5
    assert served_serial(tls) == old
    clock.now += 0.5
    assert served_serial(tls) == serial(new) != old


def test_a_rotated_client_ca_is_taken_too(tmp_path, ca):
    clock = Clock()
    paths = files(tmp_path, ca, with_client_ca=True)
    tls = watch(paths, clock)
    first = tls.current()
    (tmp_path / "ca.crt").write_bytes(trustme.CA().cert_pem.bytes())  # rotated: taken
    clock.now += 1.0
    assert tls.current() is not first and tls.client_verify


def test_a_client_ca_that_comes_or_goes_keeps_the_set_in_use(tmp_path, ca, caplog):
    # Whether clients must present a certificate is decided at start (gRPC's credentials
    # fix it), so a rewritten TF Serving SSLConfig that flips client_verify is not taken.
    clock = Clock()
    cert, key, client_ca = files(tmp_path, ca, with_client_ca=True)
    asked = [client_ca]

    def read() -> Pem:
        return read_pem_files(cert, key, asked[0], "server.tls")

    tls = ServerTls([cert, key], read, clock=clock)
    first = tls.current()
    asked[0] = None
    write_leaf(ca.issue_cert("127.0.0.1"), cert, key)
    with caplog.at_level(logging.WARNING, "modelwatch.tls"):
        clock.now += 1.0
        assert tls.current() is first
    assert tls.client_verify
    assert "remove a client CA" in caplog.text
