"""TF Serving's command-line flags -> modelwatch's config, as tables; and the daemon
started with them, as `tensorflow_model_server` would be."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import loader.app.cli
from loader.config.schema import (
    BatchingConfig,
    Config,
    ConfigError,
    LoadingConfig,
    TensorFlowConfig,
)
from loader.config.tfs_flags import (
    FLAGS,
    TfsServe,
    is_tfs_style,
    load_model_config_file,
    parse_tfs_flags,
    usage,
    wants_version,
)
from loader.config.tfs_proto_files import PROMETHEUS_PATH
from tests.daemon_process import ROOT, free_port, wait_until

MODEL = ["--model_base_path=/models/m"]


def parse(tmp_path: Path, *argv: str, base: Config | None = None, **env: str) -> TfsServe:
    return parse_tfs_flags(argv, base, environ=env, cwd=tmp_path)


def write(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


def files(tmp_path: Path) -> dict[str, str]:
    """One file of each kind the flags name, for the table below."""
    return {
        "models": write(tmp_path, "models.config",
                               'model_config_list { config { name: "a" base_path: "repo/a" } }'),
        "batching": write(tmp_path, "batching.txt", "max_batch_size { value: 8 }"),
        "monitoring": write(tmp_path, "monitoring.txt",
                                'prometheus_config { enable: true path: "/metrics" }'),
    }


# (flag, value, extra argv, what to read from the result, expected); {name} is a file above.
FLAG_TABLE: list[tuple[str, str, list[str], Any, Any]] = [
    ("port", "9000", MODEL, lambda t: t.config.server.grpc_port, 9000),
    ("port", "0", MODEL + ["--rest_api_port=8501"], lambda t: t.config.server.grpc_port, 0),
    ("rest_api_port", "9001", MODEL, lambda t: (t.config.server.rest_port, t.rest_api_enabled),
     (9001, True)),
    ("model_name", "hpt", MODEL, lambda t: t.config.models[0].name, "hpt"),
    ("model_base_path", "repo/m", [], lambda t: t.config.models[0].base_path, "{tmp}/repo/m"),
    ("model_base_path", "s3://bucket/m", [], lambda t: t.config.models[0].base_path, "s3://bucket/m"),
    ("model_base_path", "gs://bucket/m", [], lambda t: t.config.models[0].base_path, "gs://bucket/m"),
    ("model_base_path", "az://models/m", [], lambda t: t.config.models[0].base_path, "az://models/m"),
    ("model_config_file", "{models}", [],
     lambda t: ([m.base_path for m in t.config.models], str(t.model_config_file)),
     (["{tmp}/repo/a"], "{models}")),
    ("model_config_file_poll_wait_seconds", "30", ["--model_config_file={models}"],
     lambda t: t.model_config_file_poll_wait_seconds, 30.0),
    ("file_system_poll_wait_seconds", "5", MODEL, lambda t: t.config.watch.poll_interval_seconds, 5.0),
    ("num_load_threads", "4", MODEL, lambda t: t.config.loading.num_load_threads, 4),
    ("num_load_threads", "0", MODEL, lambda t: t.config.loading.num_load_threads, 1),
    ("max_num_load_retries", "7", MODEL, lambda t: t.config.loading.max_retries, 7),
    ("grpc_max_threads", "24", MODEL, lambda t: t.config.server.grpc_max_threads, 24),
    ("grpc_max_threads", "0", MODEL, lambda t: t.config.server.grpc_max_threads, 1),
    ("tensorflow_session_parallelism", "3", MODEL, lambda t: t.config.tensorflow,
     TensorFlowConfig(intra_op_parallelism=3, inter_op_parallelism=3)),
    ("tensorflow_intra_op_parallelism", "2", MODEL, lambda t: t.config.tensorflow,
     TensorFlowConfig(intra_op_parallelism=2, inter_op_parallelism=0)),
    ("tensorflow_inter_op_parallelism", "5", ["--tensorflow_intra_op_parallelism=1", *MODEL],
     lambda t: t.config.tensorflow, TensorFlowConfig(intra_op_parallelism=1, inter_op_parallelism=5)),
    ("tensorflow_inter_op_parallelism", "-3", MODEL, lambda t: t.config.tensorflow,
     TensorFlowConfig(intra_op_parallelism=0, inter_op_parallelism=-1)),
    ("load_retry_interval_micros", "2500000", MODEL,
     lambda t: t.config.loading.retry_backoff_seconds, 2.5),
    ("load_retry_interval_micros", "-1", MODEL, lambda t: t.config.loading.retry_backoff_seconds, 0.0),
    ("batching_parameters_file", "{batching}", MODEL + ["--enable_batching"],
     lambda t: (t.batching.max_batch_size, t.config.models[0].batching.max_batch_size), (8, 8)),
    ("monitoring_config_file", "{monitoring}", MODEL, lambda t: t.metrics_path, "/metrics"),
    ("host", "127.0.0.1", MODEL, lambda t: t.config.server.host, "127.0.0.1"),
    ("ports-file", "run/ports.json", MODEL, lambda t: str(t.ports_file), "{tmp}/run/ports.json"),
    ("allow_version_labels_for_unavailable_models", "true", MODEL, lambda t: t.ignored, ()),
    ("prefer_tflite_model", "true", MODEL, lambda t: t.config.tensorflow.prefer_tflite_model, True),
    ("num_tflite_pools", "3", MODEL, lambda t: t.config.tensorflow.num_tflite_interpreters, 3),
    ("num_tflite_pools", "0", MODEL, lambda t: t.config.tensorflow.num_tflite_interpreters, 1),
    ("saved_model_tags", "serve,gpu", MODEL, lambda t: t.config.tensorflow.saved_model_tags,
     ("serve", "gpu")),
    ("saved_model_tags", " custom ", MODEL, lambda t: t.config.tensorflow.saved_model_tags,
     ("custom",)),
    ("enable_serialization_as_tensor_content", "true", MODEL,
     lambda t: t.config.server.grpc_tensor_content, True),
    ("enable_per_model_batching_parameters", "true", MODEL + ["--enable_batching"],
     lambda t: (t.config.tensorflow.per_model_batching_parameters, t.ignored), (True, ())),
    ("enable_per_model_batching_parameters", "true", MODEL,
     lambda t: (t.config.tensorflow.per_model_batching_parameters, t.ignored),
     (False, ("--enable_per_model_batching_parameters",))),
    ("rest_api_timeout_in_ms", "1500", MODEL,
     lambda t: t.config.server.request_timeout_seconds, 1.5),
    ("rest_api_timeout_in_ms", "0", MODEL, lambda t: t.config.server.request_timeout_seconds, None),
    ("rest_api_timeout_in_ms", "-1", MODEL, lambda t: t.config.server.request_timeout_seconds, None),
    ("rest_api_enable_cors_support", "true", MODEL, lambda t: t.config.server.rest_cors, True),
    ("enable_grpc_healthcheck_service", "true", MODEL, lambda t: t.ignored, ()),
]


def fill(template: Any, names: dict[str, str]) -> Any:
    if isinstance(template, str):
        return template.format(**names)
    if isinstance(template, (list, tuple)):
        return type(template)(fill(t, names) for t in template)
    return template


@pytest.mark.parametrize("syntax", ["equals", "space"])
@pytest.mark.parametrize(("flag", "raw", "extra", "read", "expected"), FLAG_TABLE,
                         ids=[f"{row[0]}={row[1]}" for row in FLAG_TABLE])
def test_each_flag_in_both_syntaxes(tmp_path, syntax, flag, raw, extra, read, expected):
    names = {"tmp": str(tmp_path), **files(tmp_path)}
    raw = fill(raw, names)
    given = [f"--{flag}={raw}"] if syntax == "equals" else [f"--{flag}", raw]
    result = parse(tmp_path, *fill(extra, names), *given)
    assert read(result) == fill(expected, names)


@pytest.mark.parametrize(
    ("given", "expected"),
    [([], None), (["--enable_batching"], BatchingConfig()), (["--enable_batching=true"], BatchingConfig()),
     (["--enable_batching=TRUE"], BatchingConfig()), (["--enable_batching=1"], BatchingConfig()),
     (["--enable_batching=false"], None), (["--enable_batching=0"], None),
     (["--enable_batching", "false"], None), (["--enable_batching", "True"], BatchingConfig()),
     (["--enable_batching", "--port", "9000"], BatchingConfig())],
)
def test_boolean_flags(tmp_path, given, expected):
    result = parse(tmp_path, *MODEL, *given)
    assert result.batching == expected
    assert result.config.models[0].batching == expected


def test_tf_serving_defaults(tmp_path):
    result = parse(tmp_path, "--model_base_path=/models/m")
    server = result.config.server
    assert (server.host, server.grpc_port, server.rest_port) == ("0.0.0.0", 8500, 0)
    assert result.rest_api_enabled is False
    (model,) = result.config.models
    assert (model.name, model.base_path, model.batching) == ("default", "/models/m", None)
    assert model.version_policy.model_dump(exclude_none=True) == {"latest": {"num_versions": 1}}
    assert result.config.watch.poll_interval_seconds == 1.0
    assert (result.model_config_file, result.model_config_file_poll_wait_seconds) == (None, 0.0)
    assert (result.batching, result.metrics_path, result.ports_file) == (None, PROMETHEUS_PATH, None)
    assert result.ignored == ()
    assert result.config.loading == LoadingConfig()  # modelwatch's, unless a flag says otherwise
    assert result.config.storage.cache_dir == str(tmp_path / ".modelwatch" / "cache")
    assert (server.request_timeout_seconds, server.rest_cors) == (30.0, False)


def test_the_base_config_supplies_what_the_flags_do_not_set(tmp_path):
    base = Config.model_validate({
        "server": {"host": "10.0.0.1", "max_request_bytes": 4096},
        "storage": {"cache_dir": "/var/cache/mw", "s3": {"endpoint_url": "http://minio:9000"}},
        "loading": {"max_retries": 9},
        "watch": {"ready_marker": "_READY"},
        "models": [{"name": "old", "base_path": "/old"}],
    })
    result = parse(tmp_path, "--model_base_path=/m", "--rest_api_port=8501", base=base,
                   S3_ENDPOINT="elsewhere:9000")
    server = result.config.server
    assert (server.host, server.rest_port, server.grpc_port, server.max_request_bytes) == (
        "0.0.0.0", 8501, 8500, 4096)
    assert result.config.storage.s3.endpoint_url == "http://minio:9000"
    assert result.config.storage.cache_dir == "/var/cache/mw"
    assert (result.config.loading.max_retries, result.config.watch.ready_marker) == (9, "_READY")
    assert [m.name for m in result.config.models] == ["default"]


@pytest.mark.parametrize(
    ("env", "endpoint", "region"),
    [({}, None, None),
     ({"S3_ENDPOINT": "minio:9000"}, "https://minio:9000", None),
     ({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}, "http://minio:9000", None),
     ({"S3_ENDPOINT": "http://minio:9000", "AWS_REGION": "eu-west-1"}, "http://minio:9000", "eu-west-1")],
)
def test_tf_serving_s3_variables(tmp_path, env, endpoint, region):
    s3 = parse(tmp_path, "--model_base_path=s3://bucket/m", **env).config.storage.s3
    assert (s3.endpoint_url, s3.region) == (endpoint, region)


MODELS_CONFIG = """
# several models, the way TF Serving reads them
model_config_list {
  config {
    name: "half_plus_two"
    base_path: "/models/half_plus_two"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "everything" base_path: "relative/everything" model_version_policy { all {} } }
  config { name: "latest_two" base_path: "s3://bucket/latest_two"
           model_version_policy { latest { num_versions: 2 } } }
}
"""


def test_a_model_config_file_with_several_models_policies_and_labels(tmp_path):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", "models.config", MODELS_CONFIG)
    result = parse(tmp_path, f"--model_config_file={path}", "--enable_batching")
    first, second, third = result.config.models
    assert (first.name, first.base_path, dict(first.version_labels)) == (
        "half_plus_two", "/models/half_plus_two", {"stable": 1, "canary": 2})
    assert first.version_policy.model_dump(exclude_none=True) == {"specific": {"versions": [1, 2]}}
    # relative to the file's folder, like config.yaml; TF Serving refuses relative paths
    assert second.base_path == str(tmp_path / "conf" / "relative" / "everything")
    assert second.version_policy.model_dump(exclude_none=True) == {"all": {}}
    assert third.base_path == "s3://bucket/latest_two"
    assert third.version_policy.model_dump(exclude_none=True) == {"latest": {"num_versions": 2}}
    assert all(m.batching == BatchingConfig() for m in result.config.models)


def test_a_model_config_file_with_every_store(tmp_path):
    text = "model_config_list { " + " ".join(
        f'config {{ name: "{scheme}" base_path: "{scheme}://bucket/models/m" }}'
        for scheme in ("s3", "gs", "az")
    ) + " }"
    result = parse(tmp_path, f"--model_config_file={write(tmp_path, 'models.config', text)}")
    assert [m.base_path for m in result.config.models] == [
        "s3://bucket/models/m", "gs://bucket/models/m", "az://bucket/models/m"]


def test_the_model_config_file_is_read_again_for_a_reload(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "a" base_path: "a" } }')
    result = parse(tmp_path, f"--model_config_file={path}", "--enable_batching",
                   "--model_config_file_poll_wait_seconds=60")
    path.write_text(MODELS_CONFIG)
    reloaded = result.load_config(path)
    assert [m.name for m in reloaded.models] == ["half_plus_two", "everything", "latest_two"]
    assert all(m.batching == BatchingConfig() for m in reloaded.models)
    assert reloaded.model_copy(update={"models": []}) == result.config.model_copy(update={"models": []})
    assert load_model_config_file(path)[1].batching is None


def test_the_config_file_wins_over_single_model_flags_as_in_tf_serving(tmp_path, caplog):
    # The tensorflow/serving image always passes --model_name and --model_base_path.
    path = write(tmp_path, "models.config", MODELS_CONFIG)
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, "--model_name=model", "--model_base_path=/models/model",
                       f"--model_config_file={path}")
    assert [m.name for m in result.config.models] == ["half_plus_two", "everything", "latest_two"]
    assert result.ignored == ("--model_name", "--model_base_path")
    assert [r.getMessage() for r in caplog.records] == [
        "--model_name is ignored: --model_config_file lists the models (as in TF Serving)",
        "--model_base_path is ignored: --model_config_file lists the models (as in TF Serving)",
    ]


BATCHING = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 4 }
thread_pool_name { value: "model_server_batch_threads" }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 32
pad_variable_length_inputs: true
"""


def test_a_batching_parameters_file_with_wrappers_and_allowed_batch_sizes(tmp_path, caplog):
    path = write(tmp_path, "batching.txt", BATCHING)
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, *MODEL, "--enable_batching", f"--batching_parameters_file={path}")
    expected = BatchingConfig(max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100,
                              num_batch_threads=4, allowed_batch_sizes=[8, 16, 32],
                              pad_variable_length_inputs=True)
    assert result.batching == expected and result.config.models[0].batching == expected
    what = f"thread_pool_name in --batching_parameters_file={path}"
    assert result.ignored == (what,)
    assert [r.getMessage() for r in caplog.records] == [
        f"{what} is ignored: each batching model has its own threads"]


def test_an_empty_batching_parameters_file_means_the_defaults(tmp_path):
    path = write(tmp_path, "batching.txt", "# nothing\n")
    result = parse(tmp_path, *MODEL, "--enable_batching", f"--batching_parameters_file={path}")
    assert result.batching == BatchingConfig()


@pytest.mark.parametrize(
    ("text", "path"),
    [('prometheus_config { enable: true path: "/monitoring/metrics" }', "/monitoring/metrics"),
     ("prometheus_config { enable: true }", PROMETHEUS_PATH),
     ("prometheus_config { enable: false }", None),
     ("", None)],
    ids=["custom-path", "default-path", "disabled", "empty"],
)
def test_a_monitoring_config_file(tmp_path, text, path):
    monitoring = write(tmp_path, "monitoring.txt", text)
    assert parse(tmp_path, *MODEL, f"--monitoring_config_file={monitoring}").metrics_path == path


IGNORED = [(name, f) for name, f in FLAGS.items() if f.role == "ignored"]


def other_value(flag: Any) -> str:
    """A value other than TF Serving's default, in the flag's own type."""
    if flag.kind is bool:
        return "false" if flag.default else "true"
    if flag.kind is str:
        return "x"
    return "3"


@pytest.mark.parametrize(("name", "flag"), IGNORED, ids=[n for n, _ in IGNORED])
def test_ignored_flags_warn_once_naming_the_flag(tmp_path, caplog, name, flag):
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, *MODEL, f"--{name}={other_value(flag)}")
    assert result.ignored == (f"--{name}",)
    (record,) = caplog.records
    assert record.getMessage() == f"--{name} is ignored: {flag.help}"


WITH_DEFAULT = [(name, f) for name, f in IGNORED if f.default is not None]


@pytest.mark.parametrize(("name", "flag"), WITH_DEFAULT, ids=[n for n, _ in WITH_DEFAULT])
def test_ignored_flags_at_tf_servings_default_say_nothing(tmp_path, caplog, name, flag):
    value = str(flag.default).lower() if flag.kind is bool else str(flag.default)
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        assert parse(tmp_path, *MODEL, f"--{name}={value}").ignored == ()
    assert caplog.records == []


REFUSED = [(name, f) for name, f in FLAGS.items() if f.role == "refused"]


@pytest.mark.parametrize(("name", "flag"), REFUSED, ids=[n for n, _ in REFUSED])
def test_refused_flags_name_the_flag_unless_left_at_the_default(tmp_path, name, flag):
    with pytest.raises(ConfigError) as error:
        parse(tmp_path, *MODEL, f"--{name}={other_value(flag)}")
    assert str(error.value) == f"--{name} is not supported: {flag.help}"
    default = str(flag.default).lower() if flag.kind is bool else str(flag.default)
    assert parse(tmp_path, *MODEL, f"--{name}={default}").ignored == ()


# (argv, a fragment of the one-sentence message); {tmp} is the test's folder.
ERRORS: list[tuple[list[str], str]] = [
    (MODEL + ["--modle_name=x"],
     "--modle_name is not a TF Serving flag modelwatch knows; `modelwatch serve --help` lists them"),
    (MODEL + ["--rest_api_host=0.0.0.0"],
     "--rest_api_host is not a TF Serving flag; --host sets the bind address"),
    (MODEL + ["--config", "config.yaml"], "--config is modelwatch's own flag and cannot be mixed "
     "with TF Serving's; give either modelwatch's flags or TF Serving's"),
    (MODEL + ["--rest-port", "0"], "--rest-port is modelwatch's own flag"),
    (MODEL + ["extra"], "unexpected argument 'extra': flags are --name=value"),
    (MODEL + ["--port"], "--port needs a value: --port=VALUE or --port VALUE"),
    (["--model_name", "--model_base_path=/m"], "--model_name needs a value"),
    (MODEL + ["--port=eighty"], "Couldn't interpret value eighty for flag port."),
    (MODEL + ["--enable_batching=yes"], "Couldn't interpret value yes for flag enable_batching."),
    (MODEL + ["--model_config_file_poll_wait_seconds=1.5"],
     "Couldn't interpret value 1.5 for flag model_config_file_poll_wait_seconds."),
    (["--port=8500"],
     "Both server_options.model_base_path and server_options.model_config_file are empty!"),
    (MODEL + ["--batching_parameters_file=b.txt"], "server_options.batching_parameters_file is "
     "set without setting server_options.enable_batching to true."),
    (MODEL + ["--rest_api_port=8500"], "--rest_api_port and --port are both 8500: "
     "server_options.http_port cannot be same as grpc_port. Please use a different port for "
     "HTTP/REST API."),
    (MODEL + ["--port=0"], "server_options.grpc_port is not set."),
    (MODEL + ["--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=2",
              "--tensorflow_inter_op_parallelism=2"],
     "Either configure server_options.tensorflow_session_parallelism or "
     "(server_options.tensorflow_intra_op_parallelism, "
     "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all."),
    (MODEL + ["--port=70000"], "--port: input should be less than or equal to 65535"),
    (MODEL + ["--num_load_threads=100"], "--num_load_threads: input should be less than or equal to 64"),
    (MODEL + ["--file_system_poll_wait_seconds=0"], "--file_system_poll_wait_seconds must be 1 or more"),
    (MODEL + ["--model_config_file_poll_wait_seconds=-1"],
     "--model_config_file_poll_wait_seconds must be 0 (read once) or more"),
    (["--model_base_path=hdfs://host/m"], "--model_base_path: base path hdfs://host/m is not "
     "supported; modelwatch reads local folders, s3://, gs:// and az:// only"),
    (["--model_base_path=/m", "--model_name=no/slash"], "--model_name 'no/slash' is not a valid"),
    (["--model_config_file=missing.config"],
     "--model_config_file={tmp}/missing.config cannot be read (No such file or directory)"),
    (["--model_config_file=bad.config"], "--model_config_file: Error parsing text-format "
     "tensorflow.serving.ModelServerConfig: 1:1 : Message type "
     "\"tensorflow.serving.ModelServerConfig\" has no field named \"models\"; "
     "Invalid protobuf file: '{tmp}/bad.config'"),
    # TF Serving's own bad_model_config.txt, and the text its test looks for.
    (["--model_config_file=tfs_bad.config"], "--model_config_file: Error parsing text-format "
     "tensorflow.serving.ModelServerConfig: 1:1 : Message type "
     "\"tensorflow.serving.ModelServerConfig\" has no field named \"improperly\"; "
     "Invalid protobuf file: '{tmp}/tfs_bad.config'"),
    (["--model_config_file=hdfs.config"], "--model_config_file: base path hdfs://h/m is not supported"),
    (["--model_config_file=twice.config"],
     "--model_config_file={tmp}/twice.config: Illegal to list model a multiple times in config list"),
    (MODEL + ["--enable_batching", "--batching_parameters_file=scalar.txt"],
     "--batching_parameters_file: Error parsing text-format tensorflow.serving."
     "BatchingParameters: 1:17 :"),
    (MODEL + ["--enable_batching", "--batching_parameters_file=split.txt"],
     "--batching_parameters_file={tmp}/split.txt: enable_large_batch_splitting is not supported"),
    (MODEL + ["--enable_batching", "--batching_parameters_file=sizes.txt"],
     "--batching_parameters_file={tmp}/sizes.txt: the last of allowed_batch_sizes must equal "
     "max_batch_size (4 != 8)"),
    (MODEL + ["--monitoring_config_file=relative.txt"],
     "prometheus_config.path must start with /, got 'metrics'"),
    (MODEL + ["--monitoring_config_file=missing.txt"],
     "--monitoring_config_file={tmp}/missing.txt cannot be read"),
    (MODEL + ["--saved_model_tags=serve,"],
     "--saved_model_tags: 'serve,' has an empty tag; give tags separated by commas"),
    (MODEL + ["--saved_model_tags="], "--saved_model_tags: '' has an empty tag"),
]

BAD_FILES = {
    "bad.config": "models { }",
    "tfs_bad.config": "improperly formatted file",
    "hdfs.config": 'model_config_list { config { name: "m" base_path: "hdfs://h/m" } }',
    "twice.config": 'model_config_list { config { name: "a" base_path: "/a" } '
                    'config { name: "a" base_path: "/b" } }',
    "scalar.txt": "max_batch_size: 8",  # TF Serving wants { value: 8 } too
    "split.txt": "enable_large_batch_splitting { value: true }",
    "sizes.txt": "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
    "relative.txt": 'prometheus_config { enable: true path: "metrics" }',
    "b.txt": "",
}


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[m[:50] for _, m in ERRORS])
def test_errors_are_one_sentence_naming_the_flag(tmp_path, argv, message):
    for name, text in BAD_FILES.items():
        write(tmp_path, name, text)
    with pytest.raises(ConfigError) as error:
        parse(tmp_path, *argv)
    assert message.format(tmp=tmp_path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], False), (["--config", "config.yaml"], False), (["--host", "h", "--ports-file", "p"], False),
     (["--rest-port", "0"], False), (["--port=8500"], True), (["--model_base_path", "/m"], True),
     (["--config", "c", "--enable_batching"], True), (["--ssl_config_file=x"], True),
     (["--modle_name=x"], False)],
)
def test_is_tfs_style(argv, expected):
    assert is_tfs_style(argv) is expected


def test_the_last_of_a_repeated_flag_wins(tmp_path):
    assert parse(tmp_path, *MODEL, "--port=1", "--port=2").config.server.grpc_port == 2


def test_usage_lists_every_flag():
    text = usage()
    assert all(f"--{name}" in text for name in FLAGS)


# End to end: `modelwatch serve` started with TF Serving's flags. This needs loader/app/cli.py
# to route them to loader.config.tfs_flags; until then these tests are skipped.
WIRED = hasattr(loader.app.cli, "parse_tfs_flags")
needs_wiring = pytest.mark.skipif(not WIRED, reason="loader.app.cli does not read TF Serving flags yet")


class Server:
    """`python -m loader serve <flags>` as a subprocess, with its log."""

    def __init__(self, workdir: Path, argv: list[str]) -> None:
        self.log_path = workdir / "daemon.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loader", "serve", *argv],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_available(self, client: httpx.Client, model: str, timeout: float = 90) -> list[Any]:
        def available() -> Any:
            assert self.process.poll() is None, f"the daemon exited:\n{self.log()}"
            try:
                response = client.get(f"/v1/models/{model}")
            except httpx.TransportError:
                return None
            states = response.json().get("model_version_status", [])
            return states if any(s["state"] == "AVAILABLE" for s in states) else None

        return wait_until(available, timeout, f"{model} to be available")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the daemon did not stop on SIGTERM:\n{self.log()}") from None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(*argv: str) -> Server:
        servers.append(Server(tmp_path, list(argv)))
        return servers[-1]

    yield start
    for server in servers:
        assert server.stop() == 0, server.log()


@needs_wiring
@pytest.mark.e2e
def test_serve_a_model_with_tf_servings_single_model_flags(tmp_path, tfserving_testdata, serve):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    base = tmp_path / "half_plus_two"
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", base)
    grpc_port, rest_port = free_port(), free_port()
    server = serve("--host", "127.0.0.1", f"--port={grpc_port}", "--rest_api_port", str(rest_port),
                   "--model_name=hpt", f"--model_base_path={base}")
    with httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as client:
        assert [s["version"] for s in server.wait_available(client, "hpt")] == ["123"]
        response = client.post("/v1/models/hpt:predict", json={"instances": [1.0, 2.0, 5.0]})
        assert response.json() == {"predictions": [2.5, 3.0, 4.5]}, response.text
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "hpt"
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        assert [v.version for v in answer.model_version_status] == [123]


@needs_wiring
@pytest.mark.e2e
def test_serve_a_model_config_file_and_poll_it(tmp_path, tfserving_testdata, serve):
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", tmp_path / "repo" / "a")
    shutil.copytree(tfserving_testdata / "saved_model_half_plus_two_cpu", tmp_path / "repo" / "b")
    models = tmp_path / "models.config"
    models.write_text('model_config_list { config { name: "a" base_path: "repo/a" } }')
    monitoring = write(tmp_path, "monitoring.config",
                       'prometheus_config { enable: true path: "/metrics" }')
    rest_port, ports_file = free_port(), tmp_path / "ports.json"
    server = serve("--host", "127.0.0.1", "--port=0", f"--rest_api_port={rest_port}",
                   f"--model_config_file={models}", "--model_config_file_poll_wait_seconds=1",
                   f"--monitoring_config_file={monitoring}", "--ports-file", str(ports_file))
    with httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as client:
        server.wait_available(client, "a")
        # Written once start() returns, a moment after the ports open (after the loads).
        wait_until(ports_file.exists, 30, "the ports file")
        assert json.loads(ports_file.read_text()) == {"rest_port": rest_port, "grpc_port": 0}
        models.write_text(
            'model_config_list { config { name: "a" base_path: "repo/a" } '
            'config { name: "b" base_path: "repo/b" version_labels { key: "stable" value: 123 } } }'
        )
        server.wait_available(client, "b", timeout=30)
        response = client.post("/v1/models/b/labels/stable:predict", json={"instances": [2.0]})
        assert response.json() == {"predictions": [3.0]}, response.text
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "modelwatch" in metrics.text



def test_grpc_socket_channel_arguments_and_profiler(tmp_path):
    tfs = parse(tmp_path, *MODEL, "--grpc_socket_path=tf.sock",
                "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,"
                "grpc.lb_policy_name=grpclb,big=4294967296,arabic=\u0661\u0662,under=1_000,"
                "neg=-5")
    server = tfs.config.server
    assert server.grpc_socket_path == str(tmp_path / "tf.sock")  # against the working folder
    assert server.grpc_channel_arguments == {
        "grpc.max_connection_age_ms": 2000, "grpc.lb_policy_name": "grpclb",
        "big": "4294967296",  # not an int32: a string, as TF Serving passes it
        "arabic": "\u0661\u0662", "under": "1_000", "neg": -5,  # ASCII digits only, as safe_strto32
    }
    assert server.enable_profiler  # TF Serving's default
    assert not parse(tmp_path, *MODEL, "--enable_profiler=false").config.server.enable_profiler
    assert not parse(tmp_path, *MODEL, "--port=0", "--rest_api_port=8501").config.server.enable_profiler


def test_a_channel_argument_without_a_value_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--grpc_channel_arguments: 'oops' is not key=value"):
        parse(tmp_path, *MODEL, "--grpc_channel_arguments=a=1,oops")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--version"], True), (["--port=1", "--version=true"], True),
    (["--version=false"], False), (MODEL, False),
])
def test_wants_version(argv, expected):
    assert wants_version(argv) is expected
