"""TF Serving's ModelServerConfig text format -> modelwatch models, as tables."""

from __future__ import annotations

import pytest
from tensorflow_serving.config import model_server_config_pb2

from loader.config.schema import ConfigError, ModelConfig
from loader.config.tfs_model_config import parse_model_server_config


def one(text: str) -> ModelConfig:
    (model,) = parse_model_server_config(text)
    return model


def entry(body: str) -> str:
    return "model_config_list { config { " + body + " } }"


BASE = 'name: "m" base_path: "/models/m" '


@pytest.mark.parametrize(
    ("body", "policy"),
    [
        (BASE, {"latest": {"num_versions": 1}}),
        (BASE + 'model_platform: "tensorflow"', {"latest": {"num_versions": 1}}),
        (BASE + "model_version_policy { latest { num_versions: 3 } }",
         {"latest": {"num_versions": 3}}),
        (BASE + "model_version_policy { latest { } }", {"latest": {"num_versions": 1}}),
        (BASE + "model_version_policy { all { } }", {"all": {}}),
        (BASE + "model_version_policy { specific { versions: 2 versions: 5 } }",
         {"specific": {"versions": [2, 5]}}),
        (BASE + "model_type: TENSORFLOW", {"latest": {"num_versions": 1}}),
    ],
    ids=["default", "platform", "latest-3", "latest-empty", "all", "specific", "model-type"],
)
def test_version_policies(body: str, policy: dict[str, object]) -> None:
    model = one(entry(body))
    assert model.name == "m" and model.base_path == "/models/m"
    assert model.version_policy.model_dump(exclude_none=True) == policy


def test_a_full_config_with_labels_and_several_models() -> None:
    models = parse_model_server_config(
        """
        model_config_list {
          config {
            name: "half_plus_two"
            base_path: "s3://bucket/models/half_plus_two"
            model_platform: "tensorflow"
            model_version_policy { specific { versions: 1 versions: 2 } }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
          }
          config { name: "other" base_path: "relative/other" }
        }
        """
    )
    assert [m.name for m in models] == ["half_plus_two", "other"]
    assert models[0].version_labels == {"stable": 1, "canary": 2} and models[0].in_store
    assert models[1].base_path == "relative/other"  # the caller resolves relative paths


def test_logging_config_becomes_request_logging() -> None:
    model = one(entry(BASE + 'logging_config { sampling_config { sampling_rate: 0.25 } '
                      'log_collector_config { type: "file" filename_prefix: "logs/m" } }'))
    assert model.request_logging is not None
    assert model.request_logging.model_dump() == {
        "sampling_rate": 0.25, "type": "file", "filename_prefix": "logs/m"}
    assert one(entry(BASE)).request_logging is None


def test_an_empty_list_means_no_models_and_protos_are_accepted() -> None:
    assert parse_model_server_config("model_config_list { }") == []
    config = model_server_config_pb2.ModelServerConfig()
    added = config.model_config_list.config.add(name="m", base_path="/m")
    added.model_version_policy.all.SetInParent()
    assert parse_model_server_config(config)[0].version_policy.all is not None
    assert one(entry(BASE).encode()).name == "m"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("model_config_list { config { nme: 1 } }",
         'Error parsing text-format tensorflow.serving.ModelServerConfig: 1:30 : Message type "tensorflow.serving.ModelConfig" has no field '
         'named "nme"'),
        ("", "the ModelServerConfig has no model_config_list"),
        ('custom_model_config { type_url: "x" }', "custom_model_config is not supported"),
        (entry('base_path: "/m"'), "config[0]: name is missing"),
        (entry('name: "m"'), 'config[0] (model "m"): base_path is missing'),
        (entry(BASE + 'model_platform: "pytorch"'),
         'config[0] (model "m"): model_platform "pytorch" is not supported; modelwatch '
         'serves only "tensorflow"'),
        (entry(BASE + 'model_type: TENSORFLOW model_platform: "tensorflow"'),
         "Illegal setting both ModelServerConfig::model_type (deprecated) and "
         "ModelServerConfig::model_platform."),
        (entry(BASE + "model_type: OTHER"),
         "ModelServerConfig::model_type choice OTHER not supported."),
        (entry(BASE + "model_version_policy { specific { } }"),
         'config[0] (model "m"): model_version_policy.specific lists no versions'),
        (entry(BASE + "model_version_policy { specific { versions: -1 } }"),
         "version_policy.specific.versions.0: Input should be greater than or equal to 0"),
        (entry(BASE + 'logging_config { log_collector_config { type: "kafka" '
               'filename_prefix: "/l/p" } }'),
         'config[0] (model "m"): request_logging.type: Cannot find LogCollector::Factory for '
         "type: kafka"),
        (entry(BASE + "logging_config { sampling_config { per_task_sampling_configs { "
               "sampling_rate: 1 } } }"),
         "logging_config.sampling_config.per_task_sampling_configs is not supported"),
        (entry(BASE + 'logging_config { log_collector_config { type: "file" } }'),
         "request_logging.filename_prefix: String should have at least 1 character"),
        (entry(BASE + 'logging_config { sampling_config { sampling_rate: 1.5 } '
               'log_collector_config { type: "file" filename_prefix: "/l/p" } }'),
         "request_logging.sampling_rate: Input should be less than or equal to 1"),
        (entry('name: "bad name" base_path: "/m"'), "name: String should match pattern"),
        (entry(BASE + 'version_labels { key: "" value: 1 }'), "version_labels"),
        ("model_config_list { config { " + BASE + " } config { " + BASE + " } }",
         "Illegal to list model m multiple times in config list"),
    ],
    ids=["syntax", "empty", "custom", "no-name", "no-base-path", "platform", "both-types",
         "other-type", "specific-empty", "negative-version", "log-type", "log-per-task",
         "log-no-prefix", "log-rate", "bad-name",
         "bad-label", "duplicate"],
)
def test_errors_name_the_entry_at_fault(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_model_server_config(text)
    assert complaint in str(raised.value)
