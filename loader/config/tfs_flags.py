"""TF Serving's command-line flags for `modelwatch serve`, so switching is a rename.

`tensorflow_model_server --port=8500 --rest_api_port=8501 --model_name=m
--model_base_path=/models/m` becomes `modelwatch serve` with the same flags. `FLAGS`
(in `loader.config.tfs_flag_table`) is TF Serving's flag list (`model_servers/main.cc`) with its
defaults, each marked:

- supported: translated into the `Config` (or into `TfsServe` for what the daemon needs);
- ignored: accepted, and a non-default value logs one warning naming the flag (tuning
  that has no counterpart here, such as TensorFlow's thread pools);
- refused: a non-default value is a `ConfigError`, because ignoring it would change what
  clients see (CORS, ...).

Both `--flag=value` and `--flag value` are read (TF Serving reads only the first);
booleans are `--flag` or `--flag=true|false|1|0`. Where TF Serving has an error text for
a bad value or combination, it is quoted. Deliberate differences, each for a reason:

- the host is TF Serving's `0.0.0.0` (it has no host flag), unless `--host` is given;
- `--port=0` turns gRPC off when REST is on (TF Serving refuses it);
- relative paths are accepted: flags against the working directory, entries of
  `--model_config_file` against that file's folder (TF Serving refuses both);
- without `--monitoring_config_file`, Prometheus metrics are served at TF Serving's path
  anyway (TF Serving serves none); a file with `enable: false` turns them off.

Besides TF Serving's flags, modelwatch's own `--host` and `--ports-file` are accepted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tensorflow_serving.config import model_server_config_pb2

from loader.config.schema import (
    BatchingConfig,
    Config,
    ConfigError,
    ModelConfig,
    resolve_paths,
    with_log_folder,
)
from loader.config.tfs_flag_table import BOOLEANS, FLAGS, NOT_FLAGS, convert
from loader.config.tfs_model_config import parse_model_server_config
from loader.config.tfs_proto_files import (
    PROMETHEUS_PATH,
    read_metrics_path,
    read_text_proto,
)
from loader.config.tfs_session_bundle import from_flags, from_platform_config
from loader.sources.object_store import store_scheme

log = logging.getLogger("modelwatch.tfs_flags")

@dataclass(frozen=True)
class TfsServe:
    """What TF Serving's flags ask for: the config, and what keeps it up to date."""

    config: Config  # models resolved to absolute paths
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0: read once, TF Serving's default
    batching: BatchingConfig | None = None  # --enable_batching, applied to every model
    rest_api_enabled: bool = False  # --rest_api_port 0 (TF Serving's default): no REST API
    metrics_path: str | None = PROMETHEUS_PATH  # None: prometheus_config { enable: false }
    ssl_config_file: Path | None = None  # SSLConfig: TLS on gRPC only (app.parts.ports_tls)
    ports_file: Path | None = None
    ignored: tuple[str, ...] = ()  # flags given a value that has no effect here

    def load_config(self, path: str | Path) -> Config:
        """The config with the models `path` lists now: a reloader's `load`."""
        return self.config.model_copy(
            update={"models": load_model_config_file(path, batching=self.batching)}
        )


def is_tfs_style(argv: Sequence[str]) -> bool:
    """Whether `argv` (after `serve`) uses any of TF Serving's flags."""
    return any(_name(token) in FLAGS and FLAGS[_name(token)].role != "modelwatch"
               for token in argv if token.startswith("--"))


def parse_tfs_flags(
    argv: Sequence[str],
    base: Config | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> TfsServe:
    """Translate TF Serving's flags; `base` supplies what they do not set (storage, watch
    and loading options), but not the host: that is `--host`, else TF Serving's 0.0.0.0.

    `environ` (default `os.environ`) supplies TF Serving's S3 variables: S3_ENDPOINT,
    S3_USE_HTTPS and AWS_REGION. Reads the files the flags name; a problem raises
    `ConfigError` with one sentence naming the flag. Ignored flags are logged here.
    """
    given = _read_argv(argv)
    cwd = (cwd or Path.cwd()).resolve()

    def value(name: str) -> Any:
        return given.get(name, FLAGS[name].default)

    def path(name: str) -> Path | None:
        return _absolute(value(name), cwd) if value(name) else None

    notes = _check_flags(given)  # (what is ignored, why)
    platform_file = path("platform_config_file")
    bundle = (from_flags(given, value, path) if platform_file is None
              else from_platform_config(platform_file, given))
    batching = bundle.batching
    notes += bundle.notes

    config_file, poll = path("model_config_file"), value("model_config_file_poll_wait_seconds")
    if config_file is not None:
        models = load_model_config_file(config_file, batching=batching)
        notes += [(f"--{n}", "--model_config_file lists the models (as in TF Serving)")
                  for n in ("model_name", "model_base_path") if n in given]
    elif value("model_base_path"):
        models = [_single_model(value("model_name"), value("model_base_path"), cwd, batching)]
        if poll:
            notes.append(("--model_config_file_poll_wait_seconds", "there is no --model_config_file"))
    else:
        raise ConfigError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )

    data = (base or Config()).model_dump()
    data["models"] = [m.model_dump() for m in models]
    data["server"].update(
        host=value("host"), grpc_port=value("port"), rest_port=value("rest_api_port"),
        grpc_socket_path=str(socket) if (socket := path("grpc_socket_path")) else None,
        grpc_channel_arguments=_channel_arguments(value("grpc_channel_arguments")),
        # TF Serving's default is on; it needs the gRPC port (--port=0 turns gRPC off here).
        enable_profiler=value("enable_profiler") and value("port") != 0,
        grpc_tensor_content=value("enable_serialization_as_tensor_content"),
        # As TF Serving's RunOptions: 0 or less sets no timeout.
        request_timeout_seconds=(ms / 1000 if (ms := value("rest_api_timeout_in_ms")) > 0
                                 else None),
        rest_cors=value("rest_api_enable_cors_support"),
    )
    data["watch"]["poll_interval_seconds"] = value("file_system_poll_wait_seconds")
    loading = data["loading"]
    if "num_load_threads" in given:
        loading["num_load_threads"] = max(1, value("num_load_threads"))
    if "grpc_max_threads" in given:
        data["server"]["grpc_max_threads"] = max(1, value("grpc_max_threads"))
    if "max_num_load_retries" in given:
        loading["max_retries"] = value("max_num_load_retries")
    if "load_retry_interval_micros" in given:
        loading["retry_backoff_seconds"] = max(0, value("load_retry_interval_micros")) / 1e6
    data["tensorflow"] = bundle.tensorflow
    _s3_from_environ(data["storage"]["s3"], os.environ if environ is None else environ)
    config = resolve_paths(_validate(data), cwd)
    monitoring = path("monitoring_config_file")

    for what, why in notes:
        log.warning("%s is ignored: %s", what, why)
    return TfsServe(
        config=config,
        model_config_file=config_file,
        model_config_file_poll_wait_seconds=float(poll),
        batching=batching,
        rest_api_enabled=config.server.rest_port != 0,
        metrics_path=PROMETHEUS_PATH if monitoring is None else read_metrics_path(monitoring),
        ports_file=path("ports-file"),
        ssl_config_file=path("ssl_config_file"),
        ignored=tuple(what for what, _ in notes),
    )


def _check_flags(given: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Refuse what cannot be honoured, as TF Serving would or because modelwatch cannot;
    the ignored flags given a value of their own, with the reason."""
    def value(name: str) -> Any:
        return given.get(name, FLAGS[name].default)

    for name, flag in ((n, FLAGS[n]) for n in given):
        if flag.role == "refused" and given[name] != flag.default:
            raise ConfigError(f"--{name} is not supported: {flag.help}")
    # TF Serving checks this only when the flags fill the session bundle.
    if not value("platform_config_file") and all(
        value(f"tensorflow_{n}_parallelism") > 0 for n in ("session", "intra_op", "inter_op")
    ):
        raise ConfigError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. "
            "You cannot configure all."
        )
    grpc_port, rest_port = value("port"), value("rest_api_port")
    if grpc_port == 0 and rest_port == 0:
        raise ConfigError(
            "server_options.grpc_port is not set. (--port=0 turns gRPC off, so give "
            "--rest_api_port for REST)"
        )
    if grpc_port == rest_port:
        raise ConfigError(
            f"--rest_api_port and --port are both {grpc_port}: server_options.http_port cannot "
            "be same as grpc_port. Please use a different port for HTTP/REST API."
        )
    if value("ssl_config_file") and grpc_port == 0:
        raise ConfigError(
            "--ssl_config_file secures the gRPC port, and --port=0 turns gRPC off (REST stays "
            "plain HTTP under it, as in TF Serving; config.yaml's server.tls secures REST)"
        )
    if value("model_config_file_poll_wait_seconds") < 0:
        raise ConfigError("--model_config_file_poll_wait_seconds must be 0 (read once) or more")
    if value("file_system_poll_wait_seconds") <= 0:
        raise ConfigError(
            "--file_system_poll_wait_seconds must be 1 or more: modelwatch always watches "
            "storage (to freeze versions, give a specific version policy in --model_config_file)"
        )
    return [(f"--{n}", FLAGS[n].help) for n in given
            if FLAGS[n].role == "ignored" and given[n] != FLAGS[n].default]


def load_model_config_file(
    path: str | Path, *, batching: BatchingConfig | None = None
) -> list[ModelConfig]:
    """The models a ModelServerConfig text file lists, base paths made absolute against the
    file's folder, each with `batching`. Raises `ConfigError` naming the file."""
    path = Path(path).resolve()
    parsed = read_text_proto("model_config_file", path, model_server_config_pb2.ModelServerConfig())
    try:
        models = parse_model_server_config(parsed)
    except ConfigError as error:
        raise ConfigError(f"--model_config_file={path}: {error}") from None
    return [
        with_log_folder(m, path.parent).model_copy(update={
            "base_path": _base_path("model_config_file", m.base_path, path.parent),
            "batching": batching,
        })
        for m in models
    ]


def usage() -> str:
    """The flags, by role, for `modelwatch serve --help`."""
    lines = []
    for role, title in (("supported", "TF Serving flags"), ("ignored", "accepted, no effect"),
                        ("refused", "refused unless left at the default"),
                        ("modelwatch", "modelwatch's own, with TF Serving flags")):
        lines.append(f"{title}:")
        for f in (f for f in FLAGS.values() if f.role == role):
            default = "" if f.default in (None, "") else f" (default {str(f.default).lower()})"
            lines.append(f"  --{f.name}{default}: {f.help}")
    return "\n".join(lines)


def _name(token: str) -> str:
    return token[2:].partition("=")[0]


def _read_argv(argv: Sequence[str]) -> dict[str, Any]:
    """Each given flag's typed value (the last one wins, as in TF Serving)."""
    values: dict[str, Any] = {}
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: flags are --name=value")
        name, has_value, raw = token[2:].partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            raise ConfigError(NOT_FLAGS.get(name) or f"--{name} is not a TF Serving flag "
                              "modelwatch knows; `modelwatch serve --help` lists them")
        if not has_value:
            if flag.kind is bool:  # `--flag`, or `--flag false`: a boolean literal follows
                raw = tokens.pop(0) if tokens and tokens[0].lower() in BOOLEANS else "true"
            elif tokens and not tokens[0].startswith("--"):
                raw = tokens.pop(0)
            else:
                raise ConfigError(f"--{name} needs a value: --{name}=VALUE or --{name} VALUE")
        try:
            values[name] = convert(flag.kind, raw)
        except ValueError:
            raise ConfigError(f"Couldn't interpret value {raw} for flag {name}.") from None
    return values


def _absolute(path: str, folder: Path) -> Path:
    return (folder / Path(path).expanduser()).resolve()


def _base_path(flag: str, base_path: str, folder: Path) -> str:
    if store_scheme(base_path) is not None:
        return base_path
    if "://" in base_path:
        raise ConfigError(
            f"--{flag}: base path {base_path} is not supported; modelwatch reads local "
            "folders, s3://, gs:// and az:// only"
        )
    return str(_absolute(base_path, folder))


def _single_model(
    name: str, base_path: str, cwd: Path, batching: BatchingConfig | None
) -> ModelConfig:
    try:
        return ModelConfig(name=name, base_path=_base_path("model_base_path", base_path, cwd),
                           batching=batching)
    except ValidationError:
        raise ConfigError(
            f"--model_name {name!r} is not a valid model name: use letters, digits, _, . and -"
        ) from None


_INT32_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def _channel_arguments(text: str) -> dict[str, int | str]:
    """`key=value,key=value` as TF Serving reads it: a value that is an int32 is an int."""
    arguments: dict[str, int | str] = {}
    for item in filter(None, text.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--grpc_channel_arguments: {item!r} is not key=value "
                "(the flag takes key=value pairs separated by commas)"
            )
        # TF Serving's safe_strto32: ASCII digits only (Python's int() reads any Unicode
        # digit and "1_000").
        number = int(raw) if _INT32_TEXT.fullmatch(raw) else None
        arguments[key] = number if number is not None and -(2**31) <= number < 2**31 else raw
    return arguments


def wants_version(argv: Sequence[str]) -> bool:
    """Whether TF Serving's `--version` is among `argv` (then nothing else is read)."""
    return any(token == "--version" or (token.startswith("--version=") and
               token.partition("=")[2].lower() in ("true", "1")) for token in argv)


def _s3_from_environ(s3: dict[str, Any], environ: Mapping[str, str]) -> None:
    """TF Serving's S3 variables, where `base` sets nothing."""
    endpoint = environ.get("S3_ENDPOINT")
    if endpoint and not s3.get("endpoint_url"):
        if "://" not in endpoint:
            https = environ.get("S3_USE_HTTPS", "1").lower() not in ("0", "false")
            endpoint = ("https://" if https else "http://") + endpoint
        s3["endpoint_url"] = endpoint
    if environ.get("AWS_REGION") and not s3.get("region"):
        s3["region"] = environ["AWS_REGION"]


# Config keys the flags set, for errors in the flags' words.
_FLAG_OF: dict[tuple[int | str, ...], str] = {
    ("server", "host"): "--host",
    ("server", "grpc_port"): "--port",
    ("server", "rest_port"): "--rest_api_port",
    ("server", "grpc_socket_path"): "--grpc_socket_path",
    ("server", "request_timeout_seconds"): "--rest_api_timeout_in_ms",
    ("watch", "poll_interval_seconds"): "--file_system_poll_wait_seconds",
    ("loading", "num_load_threads"): "--num_load_threads",
    ("loading", "max_retries"): "--max_num_load_retries",
    ("loading", "retry_backoff_seconds"): "--load_retry_interval_micros",
    ("tensorflow", "saved_model_tags"): "--saved_model_tags",
}


def _validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_FLAG_OF.get(tuple(e['loc'][:2]), '.'.join(map(str, e['loc'])))}: "
            f"{str(e['msg']).removeprefix('Value error, ').lower()}" for e in exc.errors()
        )
        raise ConfigError(problems) from None
