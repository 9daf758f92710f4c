"""Certificates made in the tests (trustme), written as the files a server reads, and the
certificate a fresh TLS connection is shown."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import trustme
from cryptography import x509


def write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """The chain to `cert` and the key to `key`, each replaced whole (as a rotation does)."""
    for path, text in ((cert, b"".join(p.bytes() for p in leaf.cert_chain_pems)),
                       (key, leaf.private_key_pem.bytes())):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(text)
        os.replace(tmp, path)


def serial(leaf: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def ssl_config(leaf: trustme.LeafCert, ca: trustme.CA | None = None,
               client_verify: bool = False) -> str:
    """TF Serving's SSLConfig text, PEM inline."""
    def field(name: str, pem: bytes) -> str:
        return f'{name}: "' + pem.decode().replace("\n", "\\n") + '"\n'

    text = field("server_key", leaf.private_key_pem.bytes())
    text += field("server_cert", b"".join(p.bytes() for p in leaf.cert_chain_pems))
    if ca is not None:
        text += field("custom_ca", ca.cert_pem.bytes())
    return text + f"client_verify: {str(client_verify).lower()}\n"


def client_context(ca: trustme.CA, client: trustme.LeafCert | None = None,
                   alpn: str = "http/1.1") -> ssl.SSLContext:
    """A client's context trusting `ca`, presenting `client`'s certificate if given."""
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    if client is not None:
        client.configure_cert(context)
    context.set_alpn_protocols([alpn])
    return context


def peer_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection to `port` is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
