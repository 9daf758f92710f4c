"""TF Serving's protobuf text files, as its flags name them.

`read_text_proto` reads any of them into a message (`--model_config_file` included).
`read_batching_parameters` (`--batching_parameters_file`), `read_metrics_path`
(`--monitoring_config_file`) and `read_ssl_config` (`--ssl_config_file`) read the three
whose messages tensorflow-serving-api does not ship, from a private descriptor pool. A
problem raises `ConfigError` naming the flag.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message,
    message_factory,
    text_format,
    wrappers_pb2,
)
from pydantic import ValidationError

from loader.config.schema import BatchingConfig, ConfigError
from loader.serving.tls import Pem

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


# The messages of TF Serving's text files that tensorflow-serving-api does not ship
# (session_bundle_config.proto, monitoring_config.proto, ssl_config.proto; TF Serving's
# sources, Apache License 2.0, Copyright the TensorFlow Authors). Text format reads fields by name;
# the numbers matter only in binary, which is never read here.
_SCHEMA = """
name: "modelwatch/tfs_flags.proto" package: "tensorflow.serving" syntax: "proto3"
dependency: "google/protobuf/wrappers.proto"
message_type { name: "BatchingParameters"
  field { name: "max_batch_size" number: 1 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "batch_timeout_micros" number: 2 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "max_enqueued_batches" number: 3 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "num_batch_threads" number: 4 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "thread_pool_name" number: 5 type: TYPE_MESSAGE type_name: ".google.protobuf.StringValue" }
  field { name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64 }
  field { name: "pad_variable_length_inputs" number: 7 type: TYPE_BOOL }
  field { name: "enable_large_batch_splitting" number: 9 type: TYPE_MESSAGE type_name: ".google.protobuf.BoolValue" }
  field { name: "max_execution_batch_size" number: 10 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
}
message_type { name: "PrometheusConfig"
  field { name: "enable" number: 1 type: TYPE_BOOL }
  field { name: "path" number: 2 type: TYPE_STRING }
}
message_type { name: "MonitoringConfig"
  field { name: "prometheus_config" number: 1 type: TYPE_MESSAGE type_name: ".tensorflow.serving.PrometheusConfig" }
}
message_type { name: "SSLConfig"
  field { name: "server_key" number: 1 type: TYPE_STRING }
  field { name: "server_cert" number: 2 type: TYPE_STRING }
  field { name: "custom_ca" number: 3 type: TYPE_STRING }
  field { name: "client_verify" number: 4 type: TYPE_BOOL }
}
"""


@functools.cache
def _message_class(name: str) -> Callable[[], message.Message]:
    pool = descriptor_pool.DescriptorPool()  # private: no clash with any installed protos
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(text_format.Parse(_SCHEMA, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


_BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                    "num_batch_threads")


def read_batching_parameters(path: Path) -> tuple[BatchingConfig, list[tuple[str, str]]]:
    """BatchingParameters -> BatchingConfig, and the fields that have no effect here."""
    params: Any = read_text_proto(
        "batching_parameters_file", path, _message_class("BatchingParameters")()
    )
    where = f"--batching_parameters_file={path}"
    if params.enable_large_batch_splitting.value:
        raise ConfigError(
            f"{where}: enable_large_batch_splitting is not supported; requests larger than "
            "max_batch_size are refused, as TF Serving does without splitting"
        )
    fields: dict[str, Any] = {f: getattr(params, f).value for f in _BATCHING_FIELDS
                              if params.HasField(f)}
    fields["allowed_batch_sizes"] = list(params.allowed_batch_sizes)
    fields["pad_variable_length_inputs"] = params.pad_variable_length_inputs
    try:
        batching = BatchingConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            "".join(f"{part}: " for part in e["loc"])
            + str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
    unused = {
        "thread_pool_name": "each batching model has its own threads",
        "max_execution_batch_size": "it applies only with enable_large_batch_splitting",
    }
    return batching, [(f"{f} in {where}", why) for f, why in unused.items() if params.HasField(f)]


def read_metrics_path(path: Path) -> str | None:
    """The Prometheus path a MonitoringConfig text file asks for; None when it disables
    Prometheus (`enable: false`)."""
    config: Any = read_text_proto(
        "monitoring_config_file", path, _message_class("MonitoringConfig")()
    )
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    if prometheus.path and not prometheus.path.startswith("/"):
        raise ConfigError(
            f"--monitoring_config_file={path}: prometheus_config.path must start with /, "
            f"got {prometheus.path!r}"
        )
    return prometheus.path or PROMETHEUS_PATH


def read_ssl_config(path: Path) -> Pem:
    """TF Serving's SSLConfig text file, PEM text inline, as `server.cc` reads it: the
    server's key and certificate and, with `client_verify`, the CA (`custom_ca`) that must
    have signed a client's certificate. Without `client_verify`, `custom_ca` has no effect,
    as in TF Serving."""
    config: Any = read_text_proto("ssl_config_file", path, _message_class("SSLConfig")())
    where = f"--ssl_config_file={path}"
    if config.client_verify and not config.custom_ca:
        # TF Serving would verify them against gRPC's built-in public roots: any public CA.
        raise ConfigError(
            f"{where}: client_verify needs custom_ca, the CA that signs the client certificates"
        )
    return Pem(
        key=config.server_key.encode(), chain=config.server_cert.encode(),
        client_ca=config.custom_ca.encode() if config.client_verify else None,
        key_from=f"server_key ({where})", chain_from=f"server_cert ({where})",
        client_ca_from=f"custom_ca ({where})",
    )


def read_text_proto(flag: str, path: Path, proto: message.Message) -> message.Message:
    """Parse the text-format file `path`, which `--flag` names, into `proto`; a file that
    cannot be read or parsed raises `ConfigError` naming the flag and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"--{flag}={path} cannot be read ({reason})") from None
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        # TF Serving's two lines: protobuf's parse error, then its own verdict on the file.
        raise ConfigError(
            f"--{flag}: {parse_error_text(proto, exc)}; Invalid protobuf file: '{path}'"
        ) from None
    return proto


def parse_error_text(proto: message.Message, error: Exception) -> str:
    """Protobuf's own words for a text-format error, as TF Serving's logs show them."""
    return f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {str(error).rstrip('.')}"
