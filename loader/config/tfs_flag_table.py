"""TF Serving's flags (`model_servers/main.cc`) with their defaults, and what each one
becomes here: supported, ignored (a warning when given), refused, or modelwatch's own.
`loader.config.tfs_flags` reads argv against this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["supported", "ignored", "refused", "modelwatch"]


@dataclass(frozen=True)
class Flag:
    """One flag: its value type, its default and its help.

    The default is TF Serving's, or None where it has none that applies here: a machine-
    dependent one, or the three loading flags, which leave modelwatch's loading options
    (parallel loads, and retries that back off) as they are unless given.
    """

    name: str
    kind: type
    default: Any
    role: Role
    help: str


def _table(kind: type, role: Role, rows: str) -> list[Flag]:
    """Rows of `name | default | help`; the default is read as `kind` ('-': none)."""
    flags = []
    for row in rows.strip().splitlines():
        name, default, text = (part.strip() for part in row.split("|"))
        value = None if default == "-" else convert(kind, default) if kind is not str else default
        flags.append(Flag(name, kind, value, role, text))
    return flags


BOOLEANS = {"true": True, "1": True, "false": False, "0": False}  # as TF's flag parser


def convert(kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.lower() not in BOOLEANS:
            raise ValueError(raw)
        return BOOLEANS[raw.lower()]
    return kind(raw)


FLAGS: dict[str, Flag] = {f.name: f for f in [
    *_table(int, "supported", """
        port | 8500 | gRPC port; 0 turns gRPC off (then --rest_api_port is required)
        rest_api_port | 0 | REST port; 0 (the default) means no REST API, as in TF Serving
        num_load_threads | - | loads in parallel (0: one at a time) -> loading.num_load_threads
        max_num_load_retries | - | retries of a failed load -> loading.max_retries
        grpc_max_threads | - | threads answering gRPC calls (default 4 per core) -> server.grpc_max_threads
        load_retry_interval_micros | - | first retry delay -> loading.retry_backoff_seconds
        file_system_poll_wait_seconds | 1 | storage poll period -> watch.poll_interval_seconds
        model_config_file_poll_wait_seconds | 0 | re-read --model_config_file this often; 0: never
        tensorflow_session_parallelism | 0 | sizes both pools below (0: TensorFlow picks)
        tensorflow_intra_op_parallelism | 0 | threads one op may use -> tensorflow.intra_op_parallelism
        tensorflow_inter_op_parallelism | 0 | ops run at once (<0: on the calling thread) -> tensorflow.inter_op_parallelism
        num_tflite_pools | - | interpreters per TFLite version (default one per CPU) -> tensorflow.num_tflite_interpreters
        rest_api_timeout_in_ms | 30000 | REST predictions get 504 past it; <=0: none -> server.request_timeout_seconds
    """),
    *_table(bool, "supported", """
        enable_batching | false | batch requests, with --batching_parameters_file or defaults
        allow_version_labels_for_unavailable_models | false | always allowed in modelwatch
        prefer_tflite_model | false | serve a version's model.tflite when it has one -> tensorflow.prefer_tflite_model
        enable_profiler | true | TensorFlow's ProfilerService on the gRPC port -> server.enable_profiler
        version | false | print the versions and exit
        enable_per_model_batching_parameters | false | with --enable_batching, a version's batching_params.pbtxt sets its batching (none: not batched) -> tensorflow.per_model_batching_parameters
        enable_serialization_as_tensor_content | false | gRPC Predict answers numbers in tensor_content -> server.grpc_tensor_content
        rest_api_enable_cors_support | false | CORS headers on REST answers -> server.rest_cors
        enable_grpc_healthcheck_service | false | grpc.health.v1 (always served here, with TF Serving's names)
    """),
    *_table(str, "supported", """
        model_name | default | the single model's name (ignored with --model_config_file)
        model_base_path | | the single model's folder, or s3://, gs:// or az:// prefix
        model_config_file | | ModelServerConfig text file listing the models
        batching_parameters_file | | BatchingParameters text file, applied to every model
        monitoring_config_file | | MonitoringConfig text file: prometheus_config { enable path }
        grpc_socket_path | | also serve gRPC on this Unix domain socket -> server.grpc_socket_path
        grpc_channel_arguments | | gRPC server arguments, key=value,... -> server.grpc_channel_arguments
        saved_model_tags | serve | the MetaGraph tag set loaded, tag,tag,... -> tensorflow.saved_model_tags
        tensorflow_session_config_file | | ConfigProto text file: its thread counts size the pools below unless those flags do; other fields are warned about
        platform_config_file | | PlatformConfigMap text file: the tensorflow platform's SessionBundleConfig, in place of the flags that set it
        ssl_config_file | | SSLConfig text file: TLS, and with client_verify client certificates, on gRPC (REST stays plain HTTP)
    """),
    *_table(int, "ignored", """
        rest_api_num_threads | - | REST runs on an event loop and a worker pool
        num_unload_threads | 0 | unloads run on the manager's threads
        num_request_iterations_for_warmup | 0 | not configurable here
        num_tflite_interpreters_per_pool | 1 | TFLite runs batch with --enable_batching instead
    """),
    *_table(float, "ignored", """
        per_process_gpu_memory_fraction | 0 | TensorFlow's default GPU memory handling is used
    """),
    *_table(bool, "ignored", """
        flush_filesystem_caches | true | nothing to flush
        enable_model_warmup | true | not configurable here
        remove_unused_fields_from_bundle_metagraph | true | not applicable
        enable_signature_method_name_check | false | signatures are not checked by method name
        xla_cpu_compilation_enabled | false | TensorFlow's default JIT setting is used
        xla_gpu_compilation_enabled | false | TensorFlow's default JIT setting is used
        skip_initialize_tpu | false | no TPU support
    """),
    *_table(str, "ignored", """
        thread_pool_factory_config_file | | TensorFlow picks its thread pools
        mixed_precision | | models run in the precision they were saved in
    """),
    *_table(bool, "refused", """
        use_alts_credentials | false | no ALTS credentials
    """),
    *_table(str, "modelwatch", """
        host | 0.0.0.0 | bind address for gRPC and REST (TF Serving binds every interface)
        ports-file | | write the bound ports here as JSON once serving
    """),
]}

# Names a TF Serving user may reach for that are not TF Serving flags: what to say instead.
NOT_FLAGS = {
    "rest_api_host": "--rest_api_host is not a TF Serving flag; --host sets the bind address",
    **{name: f"--{name} is modelwatch's own flag and cannot be mixed with TF Serving's; "
             "give either modelwatch's flags or TF Serving's"
       for name in ("config", "rest-port", "grpc-port")},
}
