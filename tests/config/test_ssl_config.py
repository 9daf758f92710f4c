"""TLS settings: TF Serving's `--ssl_config_file` (an SSLConfig text file, PEM inline) and
config.yaml's `server.tls`, read into each port's certificates; a setting that cannot serve
is one sentence naming it, also from the command line (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

import loader.app.cli
from loader.app.parts import ports_tls
from loader.config.schema import ConfigError, load_config
from loader.config.tfs_flags import FLAGS, parse_tfs_flags
from loader.config.tfs_proto_files import read_ssl_config
from tests.certificates import ssl_config, write_leaf
from tests.daemon_process import ROOT


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1")


def written(tmp_path: Path, text: str, name: str = "ssl.config") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_an_ssl_config_as_tf_serving_reads_it(tmp_path, ca, leaf):
    pem = read_ssl_config(written(tmp_path, ssl_config(leaf, ca, client_verify=True)))
    assert pem.key == leaf.private_key_pem.bytes()
    assert pem.chain == b"".join(p.bytes() for p in leaf.cert_chain_pems)
    assert pem.client_ca == ca.cert_pem.bytes()


def test_pem_split_over_adjacent_strings_and_custom_ca_without_client_verify(tmp_path, ca, leaf):
    # Text format joins adjacent strings, so PEM may run one line a string.
    def lines(pem: bytes) -> str:
        return "\n".join(f'  "{line}\\n"' for line in pem.decode().splitlines())

    text = (f"server_key:\n{lines(leaf.private_key_pem.bytes())}\n"
            f"server_cert:\n{lines(leaf.cert_chain_pems[0].bytes())}\n"
            f"custom_ca:\n{lines(ca.cert_pem.bytes())}\n")
    pem = read_ssl_config(written(tmp_path, text))
    assert pem.key == leaf.private_key_pem.bytes()
    assert pem.client_ca is None  # as in TF Serving: custom_ca counts only with client_verify
    tls = ports_tls(None, tmp_path / "ssl.config")
    assert tls.rest is None and tls.grpc is not None and not tls.grpc.client_verify


def test_the_flag_is_supported_and_secures_grpc_only(tmp_path, ca, leaf):
    written(tmp_path, ssl_config(leaf, ca, client_verify=True))
    assert FLAGS["ssl_config_file"].role == "supported"
    tfs = parse_tfs_flags(["--model_base_path=/m", "--ssl_config_file=ssl.config"], cwd=tmp_path)
    assert tfs.ssl_config_file == tmp_path / "ssl.config"
    tls = ports_tls(tfs.config.server.tls, tfs.ssl_config_file)
    assert tls.rest is None and tls.grpc is not None and tls.grpc.client_verify


# (SSLConfig text, or None for no file; the start of the sentence); {path} is the file.
SSL_ERRORS = [
    (None, "--ssl_config_file={path} cannot be read (No such file or directory)"),
    ("server_key: 1 2", "--ssl_config_file: Error parsing text-format tensorflow.serving.SSLConfig"),
    ('server_cert: "x"', "server_cert (--ssl_config_file={path}): not PEM certificates"),
    ("client_verify: true", "--ssl_config_file={path}: client_verify needs custom_ca"),
]


@pytest.mark.parametrize(("text", "message"), SSL_ERRORS, ids=[m[:40] for _, m in SSL_ERRORS])
def test_an_ssl_config_that_cannot_serve_names_the_flag_and_field(tmp_path, text, message):
    path = tmp_path / "ssl.config"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as error:
        ports_tls(None, path)
    assert str(error.value).startswith(message.format(path=path)), error.value


@pytest.mark.parametrize("field", ["server_key", "custom_ca"])
def test_a_bad_key_or_ca_names_its_field(tmp_path, ca, leaf, field):
    text = ssl_config(leaf, ca, client_verify=True)
    start = text.index(f'{field}: "') + len(field) + 3
    path = written(tmp_path, text[:start] + "garbage" + text[start:])
    with pytest.raises(ConfigError, match=rf"^{field} \(--ssl_config_file="):
        ports_tls(None, path)


def test_ssl_config_file_with_grpc_off_is_refused():
    with pytest.raises(ConfigError, match="--ssl_config_file secures the gRPC port, and "
                                          "--port=0 turns gRPC off"):
        parse_tfs_flags(["--model_base_path=/m", "--port=0", "--rest_api_port=8501",
                         "--ssl_config_file=ssl.config"])


def test_server_tls_paths_are_read_against_the_config_folder(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "server: {tls: {cert_file: tls/tls.crt, key_file: tls/tls.key, client_ca_file: ca.crt}}"
    )
    tls = load_config(tmp_path / "config.yaml").server.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        str(tmp_path / "tls/tls.crt"), str(tmp_path / "tls/tls.key"), str(tmp_path / "ca.crt"))


def test_server_tls_needs_a_certificate_and_a_key(tmp_path):
    (tmp_path / "config.yaml").write_text("server: {tls: {cert_file: tls.crt, keyfile: k}}")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "config.yaml")
    assert "server.tls.key_file: field required" in str(error.value)
    assert "server.tls.keyfile is not a known key" in str(error.value)


@pytest.mark.parametrize("style", ["config.yaml", "tf_serving_flags"])
def test_the_command_line_says_which_file_cannot_serve_without_a_traceback(tmp_path, leaf, style):
    write_leaf(leaf, tmp_path / "tls.crt", tmp_path / "tls.key")
    (tmp_path / "tls.key").write_text("half written")
    if style == "config.yaml":
        (tmp_path / "config.yaml").write_text(
            "server: {tls: {cert_file: tls.crt, key_file: tls.key}}\nmodels: []\n")
        argv = ["--config", str(tmp_path / "config.yaml")]
        named = f"server.tls.key_file ({tmp_path}/tls.key): not an unencrypted PEM private key"
    else:
        written(tmp_path, 'server_key: "half written"\n' + ssl_config(leaf).split("\n", 1)[1])
        argv = ["--model_base_path=/m", f"--ssl_config_file={tmp_path / 'ssl.config'}"]
        named = f"server_key (--ssl_config_file={tmp_path}/ssl.config): not an unencrypted PEM"
    result = subprocess.run([sys.executable, "-m", "loader", "serve", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"modelwatch: error: {named}"), result.stderr
    assert "Traceback" not in result.stderr


def test_modelwatch_ray_refuses_server_tls_rather_than_serve_plain_text(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("server: {tls: {cert_file: c, key_file: k}}\n")
    assert loader.app.cli.main(["ray", "--config", str(tmp_path / "config.yaml")]) == 2
    assert "server.tls is not supported by `modelwatch ray` yet" in capsys.readouterr().err


def test_modelwatch_ray_refuses_request_logging_rather_than_drop_the_records(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(
        "models: [{name: m, base_path: m, request_logging: {sampling_rate: 1, filename_prefix: l}}]\n"
    )
    assert loader.app.cli.main(["ray", "--config", str(tmp_path / "config.yaml")]) == 2
    assert "models['m'].request_logging is not supported by `modelwatch ray`" in capsys.readouterr().err
