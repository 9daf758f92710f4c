"""TF Serving's SessionBundleConfig: how every version loads and runs (its tag set, batching,
TensorFlow's session options, TFLite), and what each of its fields becomes here.

TF Serving fills it from its flags, or takes it whole from `--platform_config_file`, which
then wins over those flags (`server.cc`); `--tensorflow_session_config_file` (a text
`ConfigProto`) fills its `session_config`. Here each field is honoured where modelwatch has
a counterpart (the `tensorflow:` keys and batching), refused where ignoring it would change
what models answer, and otherwise ignored with a warning naming it. Differences from TF
Serving, each for a reason:

- the session config's thread counts size TensorFlow's pools unless a
  `--tensorflow_*_parallelism` flag sets them (TF Serving overwrites them with the flags'
  values, 0 included, so its file's thread counts never apply);
- spaces around the tags of `--saved_model_tags` are dropped and an empty tag is refused
  (TF Serving looks for a tag named " gpu" or "", and finds none);
- warmup always runs, whatever `enable_model_warmup` says (as `--enable_model_warmup`).

Reading either file imports TensorFlow (its `ConfigProto`), which `serve` needs anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorflow_serving.config import platform_config_pb2

from loader.config.schema import BatchingConfig, ConfigError
from loader.config.tfs_proto_files import (
    batching_config,
    bundle_message,
    bundle_pool,
    read_batching_parameters,
    read_text_proto,
)

Notes = list[tuple[str, str]]  # (what is given and ignored, why)
TENSORFLOW_PLATFORM = "tensorflow"  # TF Serving's kTensorFlowModelPlatform
_ADAPTER = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"
MAX_THREADS = 1024  # the tensorflow.*_parallelism keys' bound

# The flags whose values TF Serving puts into the SessionBundleConfig, which
# --platform_config_file replaces.
BUNDLE_FLAGS = (
    "enable_batching", "batching_parameters_file", "enable_per_model_batching_parameters",
    "tensorflow_session_config_file", "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "saved_model_tags",
    "prefer_tflite_model", "num_tflite_pools",
)  # and some flags that are ignored anyway (their warning says so)

_THREADS = "TensorFlow's thread pools are process-wide here, sized by the thread counts"
_NO_CLUSTER = "each version runs in a local session of this process, never on a cluster"
_SESSION_WHY = {
    "use_per_session_threads": _THREADS, "session_inter_op_thread_pool": _THREADS,
    "gpu_options": "TensorFlow's default device memory handling is used",
    "pluggable_device_options": "TensorFlow's default device memory handling is used",
    "device_count": "TensorFlow uses every device it finds",
    "operation_timeout_in_ms": "model calls are not cut short by an op timeout",
    "cluster_def": _NO_CLUSTER, "rpc_options": _NO_CLUSTER, "device_filters": _NO_CLUSTER,
    "share_cluster_devices_in_session": _NO_CLUSTER, "isolate_session_state": _NO_CLUSTER,
}
_BUNDLE_REFUSED = {
    "session_target": "models run in this process; there is no remote TensorFlow session",
    "experimental_fixed_input_tensors": "inputs added to every model run would change what "
                                        "models answer",
}


@dataclass(frozen=True)
class SessionBundle:
    """A SessionBundleConfig in modelwatch's terms."""

    tensorflow: dict[str, Any]  # the config's `tensorflow:` section
    batching: BatchingConfig | None  # for every model; None: no batching
    notes: Notes  # fields and flags given that have no effect here, and why


def from_flags(given: Mapping[str, Any], value: Callable[[str], Any],
               path: Callable[[str], Path | None]) -> SessionBundle:
    """What TF Serving's flags put into its SessionBundleConfig (server.cc's rules)."""
    notes: Notes = []
    batching = None
    if value("enable_batching"):
        batching = BatchingConfig()
        if (parameters := path("batching_parameters_file")) is not None:
            batching, unused = read_batching_parameters(parameters)
            notes += unused
    elif value("batching_parameters_file"):
        raise ConfigError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    per_model = bool(value("enable_per_model_batching_parameters"))
    if per_model and batching is None:
        notes.append(("--enable_per_model_batching_parameters",
                      "it applies only with --enable_batching, as in TF Serving"))
    intra = inter = 0
    if (session_file := path("tensorflow_session_config_file")) is not None:
        where = f"--tensorflow_session_config_file={session_file}"
        config = read_text_proto("tensorflow_session_config_file", session_file,
                                 bundle_message("tensorflow.ConfigProto"), bundle_pool())
        intra, inter, more = _session_config(config, where)
        notes += more
    session = max(0, value("tensorflow_session_parallelism"))  # sizes both pools
    return SessionBundle(
        tensorflow={
            "intra_op_parallelism": session or max(0, value("tensorflow_intra_op_parallelism"))
            or intra,
            # Negative: TensorFlow runs a session's ops on the calling thread.
            "inter_op_parallelism": session or max(-1, value("tensorflow_inter_op_parallelism"))
            or inter,
            "prefer_tflite_model": value("prefer_tflite_model"),
            "num_tflite_interpreters": max(1, value("num_tflite_pools"))
            if "num_tflite_pools" in given else None,
            "saved_model_tags": _tags(value("saved_model_tags").split(","), "--saved_model_tags"),
            "per_model_batching_parameters": per_model and batching is not None,
        },
        batching=batching,
        notes=notes,
    )


def from_platform_config(path: Path, given: Mapping[str, Any]) -> SessionBundle:
    """The SessionBundleConfig of a PlatformConfigMap text file's tensorflow platform."""
    where = f"--platform_config_file={path}"
    parsed: Any = read_text_proto("platform_config_file", path,
                                  platform_config_pb2.PlatformConfigMap(), bundle_pool())
    others = sorted(set(parsed.platform_configs) - {TENSORFLOW_PLATFORM})
    if others:
        raise ConfigError(f"{where}: platform(s) {others} cannot be served; modelwatch "
                          f'serves the "{TENSORFLOW_PLATFORM}" platform only')
    adapter = parsed.platform_configs[TENSORFLOW_PLATFORM].source_adapter_config
    if adapter.type_url.rpartition("/")[2] != _ADAPTER:
        raise ConfigError(
            f'{where}: the "{TENSORFLOW_PLATFORM}" platform\'s source_adapter_config is '
            f"{adapter.type_url or 'missing'}; modelwatch reads {_ADAPTER} (TF Serving's "
            "session runtime, which it reimplements) only"
        )
    unpacked: Any = bundle_message(_ADAPTER)
    unpacked.ParseFromString(adapter.value)
    bundle = unpacked.legacy_config
    notes: Notes = [(f"--{flag}", "--platform_config_file sets what it would (as in TF Serving)")
                    for flag in BUNDLE_FLAGS if flag in given]
    intra = inter = 0
    for field, field_value in bundle.ListFields():
        name = field.name
        if name in _BUNDLE_REFUSED:
            raise ConfigError(f"{where}: {name} is not supported: {_BUNDLE_REFUSED[name]}")
        if name == "session_config":
            intra, inter, more = _session_config(field_value, f"session_config in {where}")
            notes += more
        elif name not in ("batching_parameters", "saved_model_tags", "prefer_tflite_model",
                          "num_tflite_pools", "num_tflite_interpreters",
                          "enable_per_model_batching_params", "enable_model_warmup"):
            notes.append((f"{name} in {where}", "it has no counterpart in modelwatch"))
    batching = None
    if bundle.HasField("batching_parameters"):
        batching, unused = batching_config(bundle.batching_parameters, where)
        notes += unused
    # TF Serving: the deprecated num_tflite_interpreters stands in for num_tflite_pools.
    pools = bundle.num_tflite_pools or bundle.num_tflite_interpreters
    return SessionBundle(
        tensorflow={
            "intra_op_parallelism": intra, "inter_op_parallelism": inter,
            "prefer_tflite_model": bundle.prefer_tflite_model,
            "num_tflite_interpreters": pools if pools > 0 else None,
            # No tags: TF Serving's SavedModelBundleFactory loads the serve tag set.
            "saved_model_tags": _tags(list(bundle.saved_model_tags), f"saved_model_tags in {where}")
            or ["serve"],
            "per_model_batching_parameters": batching is not None
            and bundle.enable_per_model_batching_params,
        },
        batching=batching,
        notes=notes,
    )


def _session_config(config: Any, where: str) -> tuple[int, int, Notes]:
    """A ConfigProto's thread counts (intra-op, inter-op), and its other fields given,
    which have no effect here, with the reason."""
    intra = inter = 0
    notes: Notes = []
    for field, field_value in config.ListFields():
        if field.name == "intra_op_parallelism_threads":
            intra = _threads(field.name, field_value, where, lowest=0)
        elif field.name == "inter_op_parallelism_threads":
            inter = _threads(field.name, field_value, where, lowest=-1)
        elif field.name != "allow_soft_placement":  # always on: models load on any host
            notes.append((f"{field.name} in {where}",
                          _SESSION_WHY.get(field.name, "TensorFlow's default is used")))
    return intra, inter, notes


def _threads(name: str, threads: int, where: str, *, lowest: int) -> int:
    if threads > MAX_THREADS:
        raise ConfigError(f"{where}: {name} {threads} is over {MAX_THREADS}")
    return max(lowest, threads)  # a negative inter-op count: the calling thread, as TF's


def _tags(tags: list[str], where: str) -> list[str]:
    """A tag set as given (comma-separated in the flag), without surrounding spaces."""
    stripped = [tag.strip() for tag in tags]
    if "" in stripped:
        raise ConfigError(f"{where}: {','.join(tags)!r} has an empty tag; give tags "
                          "separated by commas, e.g. serve,gpu")
    return stripped
