"""config.yaml validation: defaults, JSON, relative paths, and errors that name the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loader.config.schema import ConfigError, ServerConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid():
    config = load_config(ROOT / "config.yaml")
    assert config.server.host == "127.0.0.1"
    assert [m.name for m in config.models] == ["half_plus_two", "default"]
    assert config.models[0].base_path == str(ROOT / "models" / "half_plus_two")
    assert config.models[1].base_path == str(ROOT / "models" / "default")  # make serve copies it


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, "models:\n  - {name: m, base_path: repo/m}\n"))
    (model,) = config.models
    assert model.base_path == str(tmp_path / "repo" / "m")
    assert model.version_policy.latest is not None
    assert model.version_policy.latest.num_versions == 1
    assert model.transition == "availability_preserving"
    assert config.server.rest_port == 8501 and config.server.grpc_port == 8500
    assert config.storage.cache_dir == str(tmp_path / ".modelwatch" / "cache")
    assert config.watch.poll_interval_seconds == 1.0
    assert config.server.grpc_max_threads is None
    assert config.server.grpc_threads() == max(16, 4 * len(os.sched_getaffinity(0)))
    assert ServerConfig(grpc_max_threads=3).grpc_threads() == 3
    assert config.server.operator_page is True
    assert config.server.max_event_streams == 32
    assert config.loading.memory_limit_bytes == "auto"
    assert config.loading.on_demand_wait_seconds == 30.0
    assert model.load == "always"
    assert config.server.rest_fast_path is True
    assert (config.server.grpc_max_metadata_bytes, config.server.grpc_max_concurrent_streams,
            config.server.grpc_handshake_timeout_seconds,
            config.server.grpc_idle_connection_timeout_seconds,
            config.server.grpc_max_connections) == (16384, 128, 10.0, 300.0, 512)
    server = config.server  # the REST heads and connections: nginx, Envoy and gunicorn's scale
    assert (server.max_url_bytes, server.max_header_bytes, server.max_header_count) == (
        8192, 65536, 100)
    assert (server.header_timeout_seconds, server.max_connections) == (10.0, 1024)
    assert server.allowed_hosts is None
    # A full-size body holds at most 4x its size in tensors (int64 values written "0,"),
    # and the decoding budget holds at least one such request.
    assert server.max_decoded_tensor_bytes == 4 * server.max_request_bytes
    assert server.max_decoded_tensor_bytes <= server.max_decoding_bytes == 512 * 1024 * 1024


def test_memory_limit_and_on_demand_values(tmp_path):
    config = load_config(write(tmp_path, (
        "loading: {memory_limit_bytes: 2147483648, on_demand_wait_seconds: 5}\n"
        "models:\n  - {name: m, base_path: x, load: on_demand}\n"
    )))
    assert config.loading.memory_limit_bytes == 2 << 30
    assert config.loading.on_demand_wait_seconds == 5.0
    assert config.models[0].load == "on_demand"
    config = load_config(write(tmp_path, "loading: {memory_limit_bytes: null}\n"))
    assert config.loading.memory_limit_bytes is None


def test_json_is_accepted_and_s3_paths_are_kept(tmp_path):
    doc = {
        "models": [
            {
                "name": "m",
                "base_path": "s3://bucket/prefix/m",
                "version_policy": {"specific": {"versions": [1, 3]}},
                "version_labels": {"stable": 1},
            }
        ]
    }
    config = load_config(write(tmp_path, json.dumps(doc), "config.json"))
    (model,) = config.models
    assert model.base_path == "s3://bucket/prefix/m" and model.in_store
    assert model.version_policy.specific is not None
    assert model.version_policy.specific.versions == [1, 3]


def test_store_paths_are_kept_and_their_settings_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
storage:
  gcs: {project: p, endpoint_url: "http://127.0.0.1:9023"}
  azure: {account_url: "https://acct.blob.core.windows.net"}
models:
  - {name: g, base_path: "gs://bucket/models/g"}
  - {name: a, base_path: "az://container/models/a"}
  - {name: local, base_path: "models/local"}
"""))
    assert [(m.base_path, m.in_store) for m in config.models] == [
        ("gs://bucket/models/g", True), ("az://container/models/a", True),
        (str(tmp_path / "models" / "local"), False),
    ]
    assert (config.storage.gcs.project, config.storage.gcs.endpoint_url) == (
        "p", "http://127.0.0.1:9023")
    assert config.storage.azure.account_url == "https://acct.blob.core.windows.net"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servr: {}\n", "servr is not a known key"),
        ("server: {rest_port: abc}\n", "server.rest_port: input should be a valid integer"),
        ("server: {rest_port: 70000}\n", "server.rest_port: input should be less than or equal to 65535"),
        (
            "models:\n  - {name: m, base_path: x, version_policy: {newest: {}}}\n",
            "models[0].version_policy.newest is not a known key",
        ),
        (
            "models:\n  - {name: m, base_path: x, version_policy: {}}\n",
            "models[0].version_policy: give exactly one of latest, all or specific",
        ),
        (
            "models:\n  - {name: m, base_path: x, version_policy: {latest: {num_versions: 0}}}\n",
            "models[0].version_policy.latest.num_versions: input should be greater than or equal to 1",
        ),
        (
            "models:\n  - {name: m, base_path: x, transition: fastest}\n",
            "models[0].transition: input should be 'availability_preserving' or 'resource_preserving'",
        ),
        ("models:\n  - {name: ../etc, base_path: x}\n", "models[0].name: string should match pattern"),
        ("models:\n  - {name: m}\n", "models[0].base_path: field required"),
        (
            "loading: {memory_limit_bytes: lots}\n",
            'loading.memory_limit_bytes: must be a number of bytes, "auto" or null',
        ),
        (
            "loading: {memory_limit_bytes: 1000}\n",
            "loading.memory_limit_bytes: must be at least 67108864 bytes (64 MiB)",
        ),
        (
            "loading: {memory_limit_bytes: true}\n",
            'loading.memory_limit_bytes: must be a number of bytes, "auto" or null',
        ),
        (
            "loading: {on_demand_wait_seconds: -1}\n",
            "loading.on_demand_wait_seconds: input should be greater than or equal to 0",
        ),
        (
            "models:\n  - {name: m, base_path: x, load: lazily}\n",
            "models[0].load: input should be 'always' or 'on_demand'",
        ),
        (
            "models:\n  - {name: m, base_path: x}\n  - {name: m, base_path: y}\n",
            "models: model names must be unique; repeated: m",
        ),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("models: [\n", "cannot be parsed at line"),
        ("watch: {ready_marker: ../x}\n", "watch.ready_marker: must be a plain file name"),
        ("server: {body_timeout_seconds: 0}\n", "server.body_timeout_seconds: input should be greater than 0"),
        ("server: {max_header_bytes: 100}\n",
         "server.max_header_bytes: input should be greater than or equal to 1024"),
        ("server: {max_url_bytes: 10}\n", "server.max_url_bytes: input should be greater than or equal to 256"),
        ("server: {header_timeout_seconds: 0}\n",
         "server.header_timeout_seconds: input should be greater than 0"),
        ("server: {max_connections: 0}\n", "server.max_connections: input should be greater than or equal to 1"),
        ("server: {allowed_hosts: ['']}\n", "server.allowed_hosts[0]: string should have at least 1 character"),
        ("tensorflow: {intra_op_parallelism: -1}\n",
         "tensorflow.intra_op_parallelism: input should be greater than or equal to 0"),
        ("server: {grpc_max_threads: 0}\n", "server.grpc_max_threads: input should be greater than or equal to 1"),
        ("tensorflow: {inter_op_parallelism: -2}\n",
         "tensorflow.inter_op_parallelism: input should be greater than or equal to -1"),
        ("tensorflow: {threads: 2}\n", "tensorflow.threads is not a known key"),
        ("server: {rest_fast_path: sometimes}\n", "server.rest_fast_path: input should be a valid boolean"),
        ("tensorflow: {num_tflite_interpreters: 0}\n",
         "tensorflow.num_tflite_interpreters: input should be greater than or equal to 1"),
        ("tensorflow: {prefer_tflite_model: maybe}\n",
         "tensorflow.prefer_tflite_model: input should be a valid boolean"),
        ("tensorflow: {saved_model_tags: []}\n",
         "tensorflow.saved_model_tags: tuple should have at least 1 item after validation"),
        ("tensorflow: {saved_model_tags: [serve, '']}\n",
         "tensorflow.saved_model_tags[1]: string should have at least 1 character"),
        ("server: {operator_page: maybe}\n", "server.operator_page: input should be a valid boolean"),
        ("server: {grpc_max_metadata_bytes: 100}\n",
         "server.grpc_max_metadata_bytes: input should be greater than or equal to 1024"),
        ("server: {grpc_max_concurrent_streams: 0}\n",
         "server.grpc_max_concurrent_streams: input should be greater than or equal to 1"),
        ("server: {grpc_handshake_timeout_seconds: 0}\n",
         "server.grpc_handshake_timeout_seconds: input should be greater than 0"),
        ("server: {grpc_idle_connection_timeout_seconds: -1}\n",
         "server.grpc_idle_connection_timeout_seconds: input should be greater than 0"),
        ("server: {grpc_max_connections: 0}\n",
         "server.grpc_max_connections: input should be greater than or equal to 1"),
        ("server: {max_event_streams: -1}\n",
         "server.max_event_streams: input should be greater than or equal to 0"),
        ("server: {max_event_streams: 5000}\n",
         "server.max_event_streams: input should be less than or equal to 1024"),
        ("server: {grpc_port: 0, grpc_socket_path: x.sock}\n",
         "server: grpc_socket_path needs gRPC on: grpc_port is 0"),
        ("server: {grpc_port: 0, enable_profiler: true}\n",
         "server: enable_profiler needs gRPC on: grpc_port is 0"),
        ("server: {max_decoded_tensor_bytes: 2048, max_decoding_bytes: 1024}\n",
         "server.max_decoding_bytes: input should be greater than or equal to 1048576"),
        ("server: {max_decoded_tensor_bytes: 4194304, max_decoding_bytes: 2097152}\n",
         "server: max_decoded_tensor_bytes must be at most max_decoding_bytes"),
        ("loading: {initial_load_timeout_seconds: -1}\n",
         "loading.initial_load_timeout_seconds: input should be greater than or equal to 0"),
        ("models:\n  - {name: m, base_path: m, request_logging: {sampling_rate: 1, type: kafka, "
         "filename_prefix: l/m}}\n",
         "models[0].request_logging.type: cannot find LogCollector::Factory for type: kafka"),
        ("models:\n  - {name: m, base_path: m, request_logging: {sampling_rate: -0.5, "
         "filename_prefix: l/m}}\n",
         "models[0].request_logging.sampling_rate: input should be greater than or equal to 0"),
        ("models:\n  - {name: m, base_path: m, request_logging: {sampling_rate: 1}}\n",
         "models[0].request_logging.filename_prefix: field required"),
        ("server: {request_log_queue_bytes: 10}\n",
         "server.request_log_queue_bytes: input should be greater than or equal to 65536"),
    ],
)
def test_errors_name_the_key_at_fault(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message.lower() in str(caught.value).lower()
    assert "Traceback" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.yaml")


def test_the_grpc_socket_path_is_resolved_against_the_config_folder(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server: {grpc_socket_path: run/grpc.sock}\n")
    assert load_config(path).server.grpc_socket_path == str(tmp_path / "run" / "grpc.sock")


def test_a_request_log_prefix_is_resolved_against_the_config_folder(tmp_path):
    path = write(tmp_path, "models:\n"
                 "  - {name: a, base_path: a, request_logging: {sampling_rate: 0.1, "
                 "filename_prefix: logs/a}}\n"
                 "  - {name: b, base_path: b, request_logging: {sampling_rate: 1, "
                 "filename_prefix: /var/log/b/}}\n")
    a, b = load_config(path).models
    assert a.request_logging is not None and b.request_logging is not None
    assert a.request_logging.model_dump() == {
        "sampling_rate": 0.1, "type": "file", "filename_prefix": str(tmp_path / "logs" / "a")}
    assert b.request_logging.filename_prefix == "/var/log/b/"  # a folder: its slash kept
