"""TF Serving's `ModelServerConfig` (a proto, or its text format) as modelwatch models.

This is the `--model_config_file` format and the body of the gRPC
`HandleReloadConfigRequest`:

    model_config_list {
      config {
        name: "half_plus_two"
        base_path: "/models/half_plus_two"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
      }
    }

Checks follow TF Serving's `ServerCore` (and quote its messages where it has them); a
problem raises `ConfigError` naming the entry at fault. Relative base paths are left for
the caller to resolve. A deliberate difference: an empty `model_platform` means
"tensorflow" (the only platform modelwatch serves, where TF Serving refuses the entry).
`logging_config` becomes the model's `request_logging` (its sampling rate and its "file"
collector's prefix); its per-task sampling rates, which match a datacenter and a task
index modelwatch does not have, and a custom logging config are refused.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message, text_format
from pydantic import ValidationError
from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

from loader.config.schema import ConfigError, ModelConfig
from loader.config.tfs_proto_files import parse_error_text

TENSORFLOW = "tensorflow"


def parse_model_server_config(
    config: str | bytes | model_server_config_pb2.ModelServerConfig,
) -> list[ModelConfig]:
    """The models a ModelServerConfig lists; text is read as protobuf text format.

    Raises `ConfigError` with one sentence naming the problem.
    """
    if isinstance(config, (str, bytes)):
        config = _parse_text(config)
    which = config.WhichOneof("config")
    if which == "custom_model_config":
        raise ConfigError(
            "custom_model_config is not supported; list the models in model_config_list"
        )
    if which is None:
        raise ConfigError("the ModelServerConfig has no model_config_list")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(config.model_config_list.config):
        model = _model(index, entry)
        if model.name in seen:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        models.append(model)
    return models


def _parse_text(text: str | bytes) -> model_server_config_pb2.ModelServerConfig:
    parsed = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, parsed)
    except (text_format.ParseError, message.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(parse_error_text(parsed, exc)) from None
    return parsed


def _model(index: int, entry: model_server_config_pb2.ModelConfig) -> ModelConfig:
    where = f'config[{index}] (model "{entry.name}")' if entry.name else f"config[{index}]"
    if not entry.name:
        raise ConfigError(f"{where}: name is missing")
    if not entry.base_path:
        raise ConfigError(f"{where}: base_path is missing")
    platform = _platform(where, entry)
    if platform != TENSORFLOW:
        raise ConfigError(
            f'{where}: model_platform "{platform}" is not supported; modelwatch serves '
            f'only "{TENSORFLOW}"'
        )
    fields: dict[str, Any] = {
        "name": entry.name,
        "base_path": entry.base_path,
        "version_policy": _version_policy(where, entry),
        "version_labels": dict(entry.version_labels),
    }
    if entry.HasField("logging_config"):
        fields["request_logging"] = _request_logging(where, entry.logging_config)
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def _platform(where: str, entry: model_server_config_pb2.ModelConfig) -> str:
    """TF Serving's GetPlatform, reading the deprecated model_type too."""
    if entry.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise ConfigError(
                f"{where}: Illegal setting both ModelServerConfig::model_type (deprecated) "
                "and ModelServerConfig::model_platform."
            )
        if entry.model_type != model_server_config_pb2.TENSORFLOW:
            known = dict(model_server_config_pb2.ModelType.items())
            choice = next((k for k, v in known.items() if v == entry.model_type), entry.model_type)
            raise ConfigError(
                f"{where}: ModelServerConfig::model_type choice {choice} not supported."
            )
        return TENSORFLOW
    return entry.model_platform or TENSORFLOW


def _request_logging(where: str, config: logging_config_pb2.LoggingConfig) -> dict[str, Any]:
    if config.sampling_config.per_task_sampling_configs:
        raise ConfigError(
            f"{where}: logging_config.sampling_config.per_task_sampling_configs is not "
            "supported (modelwatch has no datacenter or task index to match); give "
            "sampling_rate alone"
        )
    if config.HasField("custom_logging_config"):
        raise ConfigError(f"{where}: logging_config.custom_logging_config is not supported")
    collector = config.log_collector_config
    return {
        "sampling_rate": config.sampling_config.sampling_rate,
        "type": collector.type,
        "filename_prefix": collector.filename_prefix,
    }


def _version_policy(where: str, entry: model_server_config_pb2.ModelConfig) -> dict[str, Any]:
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": {}}
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"{where}: model_version_policy.specific lists no versions")
        return {"specific": {"versions": list(policy.specific.versions)}}
    # No policy, or latest without num_versions, means the latest one (TF Serving's default).
    latest = policy.latest.num_versions if choice == "latest" else 0
    return {"latest": {"num_versions": latest or 1}}
