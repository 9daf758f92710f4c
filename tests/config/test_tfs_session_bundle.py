"""TF Serving's SessionBundleConfig from --tensorflow_session_config_file and
--platform_config_file, and a version's batching_params.pbtxt: what each field becomes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from loader.config.schema import BatchingConfig, ConfigError, TensorFlowConfig
from loader.config.tfs_flags import TfsServe, parse_tfs_flags
from loader.config.tfs_proto_files import MAX_VERSION_FILE_BYTES, read_version_batching

MODEL = ["--model_base_path=/models/m"]


def parse(tmp_path: Path, *argv: str) -> TfsServe:
    return parse_tfs_flags([*MODEL, *argv], environ={}, cwd=tmp_path)


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def platform(legacy_config: str, key: str = "tensorflow",
             adapter: str = "tensorflow.serving.SavedModelBundleSourceAdapterConfig") -> str:
    """A PlatformConfigMap text with one platform, as TF Serving's tests write them."""
    return (f'platform_configs {{ key: "{key}" value {{ source_adapter_config {{ '
            f"[type.googleapis.com/{adapter}] {{ legacy_config {{ {legacy_config} }} }} }} }} }}")


# -- --tensorflow_session_config_file -------------------------------------------------


def test_the_session_configs_thread_counts_size_the_pools(tmp_path):
    session = write(tmp_path, "session.txt", "intra_op_parallelism_threads: 3 "
                    "inter_op_parallelism_threads: -4 allow_soft_placement: true")
    result = parse(tmp_path, f"--tensorflow_session_config_file={session}")
    assert result.config.tensorflow == TensorFlowConfig(intra_op_parallelism=3,
                                                        inter_op_parallelism=-1)
    assert result.ignored == ()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--tensorflow_intra_op_parallelism=1"], (1, 5)),
    (["--tensorflow_inter_op_parallelism=2"], (3, 2)),
    (["--tensorflow_session_parallelism=4"], (4, 4)),
])
def test_a_parallelism_flag_wins_over_the_session_config(tmp_path, flags, expected):
    session = write(tmp_path, "session.txt",
                    "intra_op_parallelism_threads: 3 inter_op_parallelism_threads: 5")
    tensorflow = parse(tmp_path, f"--tensorflow_session_config_file={session}", *flags).config.tensorflow
    assert (tensorflow.intra_op_parallelism, tensorflow.inter_op_parallelism) == expected


def test_session_config_fields_without_a_counterpart_warn_naming_each(tmp_path, caplog):
    session = write(tmp_path, "session.txt", "gpu_options { allow_growth: true } "
                    "operation_timeout_in_ms: 100 use_per_session_threads: true "
                    "graph_options { build_cost_model: 1 }")
    where = f"--tensorflow_session_config_file={session}"
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, where)
    fields = ["gpu_options", "use_per_session_threads", "graph_options", "operation_timeout_in_ms"]
    assert result.ignored == tuple(f"{field} in {where}" for field in fields)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"gpu_options in {where} is ignored: TensorFlow's default device memory handling is used",
        f"use_per_session_threads in {where} is ignored: TensorFlow's thread pools are "
        "process-wide here, sized by the thread counts",
        f"graph_options in {where} is ignored: TensorFlow's default is used",
        f"operation_timeout_in_ms in {where} is ignored: model calls are not cut short by an "
        "op timeout",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("intra_op_parallelism_threads: 5000",
     "--tensorflow_session_config_file={path}: intra_op_parallelism_threads 5000 is over 1024"),
    ("intra_op_parallelism_threads { }", "--tensorflow_session_config_file: Error parsing "
     "text-format tensorflow.ConfigProto: 1:30 : "),
    ("no_such_field: 1", 'has no field named "no_such_field"; Invalid protobuf file: \'{path}\''),
])
def test_a_bad_session_config_names_the_flag(tmp_path, text, message):
    path = write(tmp_path, "session.txt", text)
    with pytest.raises(ConfigError) as error:
        parse(tmp_path, f"--tensorflow_session_config_file={path}")
    assert message.format(path=path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_session_config_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--tensorflow_session_config_file=\S+/none.txt "
                                          r"cannot be read \(No such file or directory\)$"):
        parse(tmp_path, "--tensorflow_session_config_file=none.txt")


# -- --platform_config_file -------------------------------------------------------------


def test_the_platform_config_sets_tags_batching_and_pools(tmp_path, caplog):
    path = write(tmp_path, "platform.txt", platform(
        'saved_model_tags: "serve" saved_model_tags: "gpu" '
        "session_config { intra_op_parallelism_threads: 2 inter_op_parallelism_threads: 1 } "
        "batching_parameters { max_batch_size { value: 4 } num_batch_threads { value: 2 } } "
        "enable_per_model_batching_params: true prefer_tflite_model: true "
        "num_tflite_pools: 3 enable_model_warmup: true"))
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, f"--platform_config_file={path}")
    assert result.config.tensorflow == TensorFlowConfig(
        intra_op_parallelism=2, inter_op_parallelism=1, prefer_tflite_model=True,
        num_tflite_interpreters=3, saved_model_tags=("serve", "gpu"),
        per_model_batching_parameters=True,
    )
    expected = BatchingConfig(max_batch_size=4, num_batch_threads=2)
    assert (result.batching, result.config.models[0].batching) == (expected, expected)
    assert result.ignored == () and caplog.records == []


def test_an_empty_tensorflow_platform_is_tf_servings_defaults(tmp_path):
    path = write(tmp_path, "platform.txt", platform(""))
    result = parse(tmp_path, f"--platform_config_file={path}")
    assert result.config.tensorflow == TensorFlowConfig()  # the serve tag set, no batching
    assert result.batching is None


def test_the_platform_config_replaces_the_flags_that_set_the_bundle(tmp_path, caplog):
    path = write(tmp_path, "platform.txt", platform('mixed_precision: "bfloat16"'))
    with caplog.at_level(logging.WARNING, "modelwatch.tfs_flags"):
        result = parse(tmp_path, f"--platform_config_file={path}", "--enable_batching",
                       "--saved_model_tags=custom", "--tensorflow_session_parallelism=2",
                       "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2")
    assert (result.batching, result.config.tensorflow) == (None, TensorFlowConfig())
    where = f"--platform_config_file={path}"
    flags = ["enable_batching", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
             "tensorflow_inter_op_parallelism", "saved_model_tags"]
    assert result.ignored == (*(f"--{flag}" for flag in flags), f"mixed_precision in {where}")
    assert [r.getMessage() for r in caplog.records] == [
        *(f"--{flag} is ignored: --platform_config_file sets what it would (as in TF Serving)"
          for flag in flags),
        f"mixed_precision in {where} is ignored: it has no counterpart in modelwatch",
    ]


@pytest.mark.parametrize(("text", "message"), [
    (platform("", key="hashmap"), "{where}: platform(s) ['hashmap'] cannot be served; "
     'modelwatch serves the "tensorflow" platform only'),
    ('platform_configs { key: "tensorflow" value { } }', '{where}: the "tensorflow" platform\'s '
     "source_adapter_config is missing; modelwatch reads "
     "tensorflow.serving.SavedModelBundleSourceAdapterConfig"),
    (platform('session_target: "grpc://elsewhere:2222"'), "{where}: session_target is not "
     "supported: models run in this process; there is no remote TensorFlow session"),
    (platform('experimental_fixed_input_tensors { name: "x" }'),
     "{where}: experimental_fixed_input_tensors is not supported: inputs added to every model "
     "run would change what models answer"),
    (platform("batching_parameters { max_batch_size { value: 0 } }"),
     "{where}: max_batch_size: Input should be greater than or equal to 1"),
    (platform('saved_model_tags: ""'), "saved_model_tags in {where}: '' has an empty tag"),
    (platform("", adapter="tensorflow.serving.TfrtSavedModelSourceAdapterConfig"),
     "--platform_config_file: Error parsing text-format tensorflow.serving.PlatformConfigMap"),
    ("platform_configs { key: 1 }", "--platform_config_file: Error parsing text-format "
     "tensorflow.serving.PlatformConfigMap: 1:25 : "),
])
def test_a_platform_config_that_cannot_be_honoured_is_refused_saying_why(tmp_path, text, message):
    path = write(tmp_path, "platform.txt", text)
    with pytest.raises(ConfigError) as error:
        parse(tmp_path, f"--platform_config_file={path}")
    assert message.format(where=f"--platform_config_file={path}") in str(error.value)
    assert "\n" not in str(error.value)


# -- a version's batching_params.pbtxt --------------------------------------------------


def test_a_version_without_batching_params_has_none(tmp_path):
    assert read_version_batching(tmp_path, 3) is None


def test_a_versions_batching_params_on_the_servers_batch_threads(tmp_path):
    path = write(tmp_path, "batching_params.pbtxt", "max_batch_size { value: 4 } "
                 'allowed_batch_sizes: 2 allowed_batch_sizes: 4 thread_pool_name { value: "p" } '
                 "num_batch_threads { value: 200 }")
    batching, unused = read_version_batching(tmp_path, 3)
    assert batching == BatchingConfig(max_batch_size=4, allowed_batch_sizes=[2, 4],
                                      num_batch_threads=3)
    assert unused == [
        (f"num_batch_threads in {path}",
         "the batch threads are the server's (--batching_parameters_file), as in TF Serving"),
        (f"thread_pool_name in {path}", "each batching model has its own threads"),
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("max_batch_size { value: 1000000 } max_enqueued_batches { value: 100001 }",
     "{path}: max_batch_size 1000000 is over 65536; max_enqueued_batches 100001 is over 100000 "
     "(modelwatch's limits for this file)"),
    ("batch_timeout_micros { value: 600000000 }", "{path}: batch_timeout_micros 600000000 is "
     "over 60000000"),
    ("allowed_batch_sizes: [" + ", ".join(map(str, range(1, 101))) + "] "
     "max_batch_size { value: 100 }", "{path}: allowed_batch_sizes 100 is over 64"),
    ("max_batch_size: 4", "{path}: Error parsing text-format tensorflow.serving."
     "BatchingParameters: 1:17 : "),
    ("# " + "x" * MAX_VERSION_FILE_BYTES, f"{{path}}: larger than {MAX_VERSION_FILE_BYTES} bytes"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4",
     "{path}: the last of allowed_batch_sizes must equal max_batch_size (4 != 8)"),
])
def test_a_bad_batching_params_file_is_refused_naming_it(tmp_path, text, message):
    path = write(tmp_path, "batching_params.pbtxt", text)
    with pytest.raises(ConfigError) as error:
        read_version_batching(tmp_path, 1)
    assert message.format(path=path) in str(error.value)
    assert "\n" not in str(error.value)
