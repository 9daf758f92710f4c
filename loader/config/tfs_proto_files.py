"""TF Serving's protobuf text files, as its flags name them.

`read_text_proto` reads any of them into a message (`--model_config_file` included).
`read_batching_parameters` (`--batching_parameters_file`), `read_version_batching` (a
version folder's `batching_params.pbtxt`), `read_metrics_path` (`--monitoring_config_file`)
and `read_ssl_config` (`--ssl_config_file`) read messages tensorflow-serving-api does not
ship, from a private descriptor pool; `bundle_pool` adds TF Serving's SessionBundleConfig to
it, with TensorFlow's ConfigProto (which imports TensorFlow). A problem raises `ConfigError`
naming the flag or the file.
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
  field { name: "enable_large_batch_splitting" number: 8 type: TYPE_MESSAGE type_name: ".google.protobuf.BoolValue" }
  field { name: "max_execution_batch_size" number: 9 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
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


# TF Serving's session_bundle_config.proto and saved_model_bundle_source_adapter.proto, for
# --platform_config_file (a PlatformConfigMap holds them in an Any, read in binary: these
# numbers are TF Serving's). They embed TensorFlow's ConfigProto.
_BUNDLE_SCHEMA = """
name: "modelwatch/tfs_session_bundle.proto" package: "tensorflow.serving" syntax: "proto3"
dependency: "google/protobuf/wrappers.proto" dependency: "modelwatch/tfs_flags.proto"
dependency: "tensorflow/core/protobuf/config.proto"
dependency: "tensorflow/core/protobuf/named_tensor.proto"
message_type { name: "ModelWarmupOptions"
  field { name: "num_request_iterations" number: 1 type: TYPE_MESSAGE type_name: ".google.protobuf.Int32Value" }
  field { name: "num_model_warmup_threads" number: 2 type: TYPE_MESSAGE type_name: ".google.protobuf.Int32Value" }
  field { name: "model_name" number: 3 type: TYPE_STRING }
  field { name: "model_version" number: 4 type: TYPE_INT64 }
  field { name: "enable_all_batch_sizes_warmup" number: 5 type: TYPE_BOOL }
}
message_type { name: "SessionBundleConfig"
  field { name: "session_target" number: 1 type: TYPE_STRING }
  field { name: "session_config" number: 2 type: TYPE_MESSAGE type_name: ".tensorflow.ConfigProto" }
  field { name: "batching_parameters" number: 3 type: TYPE_MESSAGE type_name: ".tensorflow.serving.BatchingParameters" }
  field { name: "in_graph_batching_parameters" number: 7 type: TYPE_MESSAGE type_name: ".tensorflow.BatchingOptions" }
  field { name: "session_run_load_threadpool_index" number: 4 type: TYPE_MESSAGE type_name: ".google.protobuf.Int32Value" }
  field { name: "experimental_transient_ram_bytes_during_load" number: 5 type: TYPE_UINT64 }
  field { name: "saved_model_tags" number: 6 label: LABEL_REPEATED type: TYPE_STRING }
  field { name: "experimental_fixed_input_tensors" number: 778 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".tensorflow.NamedTensorProto" }
  field { name: "enable_model_warmup" number: 779 type: TYPE_BOOL }
  field { name: "model_warmup_options" number: 780 type: TYPE_MESSAGE type_name: ".tensorflow.serving.ModelWarmupOptions" }
  field { name: "enable_session_metadata" number: 781 type: TYPE_BOOL }
  field { name: "remove_unused_fields_from_bundle_metagraph" number: 782 type: TYPE_BOOL }
  field { name: "prefer_tflite_model" number: 783 type: TYPE_BOOL }
  field { name: "resource_estimation_uses_validation_result" number: 784 type: TYPE_BOOL }
  field { name: "num_tflite_interpreters" number: 785 type: TYPE_INT32 }
  field { name: "num_tflite_interpreters_per_pool" number: 786 type: TYPE_INT32 }
  field { name: "num_tflite_pools" number: 787 type: TYPE_INT32 }
  field { name: "wrap_session_with_no_threading_params" number: 788 type: TYPE_BOOL }
  field { name: "enable_per_model_batching_params" number: 789 type: TYPE_BOOL }
  field { name: "enable_saved_model_config" number: 790 type: TYPE_BOOL }
  field { name: "mixed_precision" number: 791 type: TYPE_STRING }
}
message_type { name: "SavedModelBundleSourceAdapterConfig"
  field { name: "legacy_config" number: 1000 type: TYPE_MESSAGE type_name: ".tensorflow.serving.SessionBundleConfig" }
}
"""


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()  # private: no clash with any installed protos
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(text_format.Parse(_SCHEMA, descriptor_pb2.FileDescriptorProto()))
    return pool


@functools.cache
def _message_class(name: str) -> Callable[[], message.Message]:
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"tensorflow.serving.{name}"))


@functools.cache
def bundle_pool() -> descriptor_pool.DescriptorPool:
    """The pool that also holds TF Serving's SessionBundleConfig and TensorFlow's
    ConfigProto (importing TensorFlow the first time)."""
    from loader.servables.tf_protos import session_config_files

    pool = _pool()
    for file in session_config_files():
        try:
            pool.FindFileByName(file.name)
        except KeyError:
            pool.AddSerializedFile(file.serialized_pb)
    pool.Add(text_format.Parse(_BUNDLE_SCHEMA, descriptor_pb2.FileDescriptorProto()))
    return pool


def bundle_message(full_name: str) -> message.Message:
    """An empty message of `bundle_pool` (e.g. "tensorflow.ConfigProto")."""
    return message_factory.GetMessageClass(bundle_pool().FindMessageTypeByName(full_name))()


_BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                    "num_batch_threads")
BATCHING_PARAMS_FILE = "batching_params.pbtxt"  # TF Serving's kBatchingParamsFilename
# What a version's batching_params.pbtxt may ask for. Storage is trusted more than clients,
# but a slip there must not pad batches to millions of rows or hold requests for minutes.
VERSION_FILE_LIMITS = {"max_batch_size": 65_536, "batch_timeout_micros": 60_000_000,
                       "max_enqueued_batches": 100_000, "allowed_batch_sizes": 64}
MAX_VERSION_FILE_BYTES = 64 * 1024


def read_batching_parameters(path: Path) -> tuple[BatchingConfig, list[tuple[str, str]]]:
    """BatchingParameters -> BatchingConfig, and the fields that have no effect here."""
    params: Any = read_text_proto(
        "batching_parameters_file", path, _message_class("BatchingParameters")()
    )
    return batching_config(params, f"--batching_parameters_file={path}")


def read_version_batching(
    folder: Path, num_batch_threads: int
) -> tuple[BatchingConfig, list[tuple[str, str]]] | None:
    """What a version folder's batching_params.pbtxt asks for (TF Serving's
    --enable_per_model_batching_parameters), within `VERSION_FILE_LIMITS`, and its fields
    that have no effect; None when the folder has none. As in TF Serving, the batch threads
    are the server's (`num_batch_threads`), not the file's. A bad file raises `ConfigError`
    naming it."""
    path = folder / BATCHING_PARAMS_FILE
    if not path.is_file():
        return None
    params: Any = _message_class("BatchingParameters")()
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_VERSION_FILE_BYTES + 1)
        if len(raw) > MAX_VERSION_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_VERSION_FILE_BYTES} bytes")
        text_format.Parse(raw.decode("utf-8"), params)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: {parse_error_text(params, exc)}") from None
    too_large = [
        f"{name} {value} is over {limit}" for name, value, limit in (
            *((f, getattr(params, f).value, VERSION_FILE_LIMITS[f]) for f in _BATCHING_FIELDS
              if f in VERSION_FILE_LIMITS),
            ("allowed_batch_sizes", len(params.allowed_batch_sizes),
             VERSION_FILE_LIMITS["allowed_batch_sizes"]),
        ) if value > limit
    ]
    if too_large:
        raise ConfigError(f"{path}: {'; '.join(too_large)} (modelwatch's limits for this file)")
    unused = []
    if params.HasField("num_batch_threads"):
        unused.append((f"num_batch_threads in {path}", "the batch threads are the server's "
                       "(--batching_parameters_file), as in TF Serving"))
    params.num_batch_threads.value = num_batch_threads
    batching, more = batching_config(params, str(path))
    return batching, unused + more


def batching_config(params: Any, where: str) -> tuple[BatchingConfig, list[tuple[str, str]]]:
    """A parsed BatchingParameters as a BatchingConfig, and its fields that have no effect
    here; `where` names the file in errors."""
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


def read_text_proto(
    flag: str, path: Path, proto: message.Message, pool: descriptor_pool.DescriptorPool | None = None
) -> message.Message:
    """Parse the text-format file `path`, which `--flag` names, into `proto` (its Any fields
    expanded with the types of `pool`); a file that cannot be read or parsed raises
    `ConfigError` naming the flag and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"--{flag}={path} cannot be read ({reason})") from None
    try:
        text_format.Parse(text, proto, descriptor_pool=pool)
    except text_format.ParseError as exc:
        # TF Serving's two lines: protobuf's parse error, then its own verdict on the file.
        raise ConfigError(
            f"--{flag}: {parse_error_text(proto, exc)}; Invalid protobuf file: '{path}'"
        ) from None
    return proto


def parse_error_text(proto: message.Message, error: Exception) -> str:
    """Protobuf's own words for a text-format error, as TF Serving's logs show them."""
    return f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {str(error).rstrip('.')}"
