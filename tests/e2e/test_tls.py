"""TLS end to end, as clients see it, with certificates made here (trustme):

- TF Serving's flags only (`--ssl_config_file` with `client_verify`): gRPC over mutual TLS
  with tensorflow-serving-api's stubs; a client without a certificate, with one from
  another CA, or speaking plain text is refused; REST stays plain HTTP, as in TF Serving.
- config.yaml's `server.tls` with a client CA: REST and gRPC over mutual TLS, a plain HTTP
  request or a silent connection closed within the limits (and counted), and certificate
  files rotated under the running daemon served from the next connection on.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import trustme
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.certificates import client_context, peer_serial, serial, ssl_config, write_leaf
from tests.daemon_process import ROOT, DaemonProcess, free_port, wait_until

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert  # signed by ca
    stranger: trustme.LeafCert  # signed by another CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = trustme.CA()
    return Pki(ca, ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("client@example.com"),
               trustme.CA().issue_cert("client@example.com"))


def predict(channel: grpc.Channel) -> float:
    """y for x = 2 (the model is y = 0.5 x + 1)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1  # [[2.0]]
    request.inputs["x"].tensor_shape.dim.add().size = 1
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 60)
    return float(reply.outputs["y"].float_val[0])


def secure_channel(port: int, pki: Pki, client: trustme.LeafCert | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem.bytes(),
        private_key=None if client is None else client.private_key_pem.bytes(),
        certificate_chain=None if client is None else b"".join(
            p.bytes() for p in client.cert_chain_pems),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def refused_code(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as error:
        predict(channel)
    return error.value.code()


# -- TF Serving's flags only ------------------------------------------------------------------

@dataclass(frozen=True)
class TfsDaemon:
    grpc_port: int
    rest_port: int


@pytest.fixture(scope="module")
def tfs(tmp_path_factory: pytest.TempPathFactory, model_builder, pki: Pki) -> Iterator[TfsDaemon]:
    folder = tmp_path_factory.mktemp("tfs-tls")
    model_builder.publish(folder / "m", 1, intercept=1.0)
    (folder / "ssl.config").write_text(ssl_config(pki.server, pki.ca, client_verify=True))
    grpc_port, rest_port = free_port(), free_port()
    log = folder / "daemon.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "loader", "serve", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", "--model_name=m", f"--model_base_path={folder / 'm'}",
             f"--ssl_config_file={folder / 'ssl.config'}", f"--ports-file={folder / 'ports.json'}"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: (folder / "ports.json").exists() or process.poll() is not None, 120,
                   "the daemon to serve")
        assert process.poll() is None, log.read_text()
        yield TfsDaemon(grpc_port, rest_port)
    finally:
        process.terminate()
        assert process.wait(60) == 0, log.read_text()[-3000:]


def test_grpc_over_tls_with_a_client_certificate_signed_by_custom_ca(tfs, pki):
    with secure_channel(tfs.grpc_port, pki, pki.client) as channel:
        assert predict(channel) == 2.0


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_certificate_from_custom_ca_is_refused(tfs, pki, who):
    client = None if who == "no certificate" else pki.stranger
    assert refused_code(secure_channel(tfs.grpc_port, pki, client)) is grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_grpc_client_is_refused_not_left_waiting(tfs):
    # UNAVAILABLE well within the call's 60 s: the handshake failed, nothing waited it out.
    code = refused_code(grpc.insecure_channel(f"127.0.0.1:{tfs.grpc_port}"))
    assert code is grpc.StatusCode.UNAVAILABLE


def test_rest_stays_plain_http_under_ssl_config_file(tfs):
    reply = httpx.post(f"http://127.0.0.1:{tfs.rest_port}/v1/models/m:predict",
                       json={"instances": [[2.0]]}, timeout=30)
    assert reply.json() == {"predictions": [[2.0]]}


# -- config.yaml's server.tls, mutual ----------------------------------------------------------

@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, model_builder, pki: Pki) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("server-tls")
    model_builder.publish(folder / "m", 1, intercept=1.0)
    write_leaf(pki.server, folder / "tls.crt", folder / "tls.key")
    pki.ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    d = DaemonProcess(folder, {
        "server": {"host": "127.0.0.1", "grpc_port": free_port(), "header_timeout_seconds": 3,
                   "tls": {"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt"}},
        "models": [{"name": "m", "base_path": str(folder / "m")}],
    }).start()
    assert d.client is not None
    rest_port = d.client.base_url.port
    d.client.close()
    d.client = httpx.Client(base_url=f"https://127.0.0.1:{rest_port}", timeout=30,
                            verify=client_context(pki.ca, pki.client))
    yield d
    assert d.stop() == 0, d.log()[-3000:]


def rest_port(d: DaemonProcess) -> int:
    assert d.client is not None
    port = d.client.base_url.port
    assert port is not None
    return port


def refusals(d: DaemonProcess, reason: str) -> float:
    assert d.client is not None
    prefix = f'modelwatch_refused_total{{reason="{reason}",transport="rest"}} '
    for line in d.client.get("/monitoring/prometheus/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_rest_and_grpc_over_mutual_tls(mutual, pki):
    assert mutual.answer("m") == 2.0
    with secure_channel(mutual.grpc_port, pki, pki.client) as channel:
        assert predict(channel) == 2.0


def test_rest_refuses_a_client_without_a_certificate_from_the_client_ca(mutual, pki):
    before = refusals(mutual, "tls_handshake")
    for client in (None, pki.stranger):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{rest_port(mutual)}/v1/models/m", timeout=30,
                      verify=client_context(pki.ca, client))
    wait_until(lambda: refusals(mutual, "tls_handshake") == before + 2, 30, "both counted")


def test_plain_http_and_silent_connections_are_closed_not_left_hanging(mutual):
    before = refusals(mutual, "tls_handshake")
    # A plain HTTP request: the handshake fails on its first bytes, and the connection closes.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{rest_port(mutual)}/v1/models/m", timeout=60)
    wait_until(lambda: refusals(mutual, "tls_handshake") == before + 1, 30, "it counted")
    # A client that never starts its handshake: closed at server.header_timeout_seconds.
    with socket.create_connection(("127.0.0.1", rest_port(mutual)), timeout=60) as silent:
        assert silent.recv(1) == b""


def test_rotated_certificate_files_serve_from_the_next_connection_without_a_restart(
    mutual, pki
):
    rest = client_context(pki.ca, pki.client)
    grpc_tls = client_context(pki.ca, pki.client, alpn="h2")
    ports = (rest_port(mutual), mutual.grpc_port)
    assert [peer_serial(p, c) for p, c in zip(ports, (rest, grpc_tls))] == [serial(pki.server)] * 2

    # Half written (the new certificate, the old key): refused, the old ones go on serving.
    # The files are looked at when a connection opens (at most once a second).
    new = pki.ca.issue_cert("127.0.0.1", "localhost")
    write_leaf(new, mutual.workdir / "tls.crt", mutual.workdir / "new.key")
    wait_until(lambda: peer_serial(ports[0], rest) == serial(pki.server)
               and "cannot be used, the ones in use stay" in mutual.log(), 60, "the warning",
               interval=0.5)
    assert mutual.answer("m") == 2.0

    (mutual.workdir / "new.key").replace(mutual.workdir / "tls.key")
    wait_until(lambda: peer_serial(ports[0], rest) == serial(new), 60, "REST's new certificate",
               interval=0.5)
    wait_until(lambda: peer_serial(ports[1], grpc_tls) == serial(new), 60,
               "gRPC's new certificate", interval=0.5)
    assert mutual.answer("m") == 2.0
    with secure_channel(mutual.grpc_port, pki, pki.client) as channel:
        assert predict(channel) == 2.0
