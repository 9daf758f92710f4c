"""The `modelwatch` command line: `serve` runs the daemon; `prepare-demo` builds the
embedded default model repository."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loader.base import ServingError
from loader.config.reloader import ConfigReloader
from loader.config.schema import Config, ConfigError, load_config
from loader.config.tfs_flags import is_tfs_style, parse_tfs_flags, wants_version
from loader.config.tfs_flags import usage as tfs_usage
from loader.servables.quiet_tf import (
    freeze_startup_objects,
    import_tensorflow,
    prefer_plain_allocator,
    set_thread_pools,
)

log = logging.getLogger("modelwatch")


def _serve(args: argparse.Namespace) -> int:
    config = file_config = load_config(args.config)  # before TensorFlow's slow import
    overrides = (("rest_port", args.rest_port), ("grpc_port", args.grpc_port), ("host", args.host))
    updates = {k: v for k, v in overrides if v is not None}
    if updates:
        config = config.model_copy(update={"server": config.server.model_copy(update=updates)})
    server = config.server
    return _run_daemon(
        config,
        lambda daemon: ConfigReloader(args.config, file_config, daemon.reload_models),
        Path(args.ports_file) if args.ports_file else None,
        f"server.rest_port {server.rest_port}, server.grpc_port {server.grpc_port}",
    )


def _serve_tfs(argv: Sequence[str]) -> int:
    """`serve` with TF Serving's flags (see loader/config/tfs_flags.py)."""
    if wants_version(argv):  # as TF Serving: print the versions, read nothing else
        print(f"TensorFlow ModelServer: modelwatch {_version('modelwatch')}\n"
              f"TensorFlow Library: {_version('tensorflow')}")
        return 0
    tfs = parse_tfs_flags(argv)  # before TensorFlow's slow import
    poll = tfs.model_config_file_poll_wait_seconds

    def reloader(daemon: Any) -> ConfigReloader | None:
        if tfs.model_config_file is None or not poll:
            return None  # TF Serving reads the models once
        return ConfigReloader(tfs.model_config_file, tfs.config, daemon.reload_models,
                              load=tfs.load_config, poll_interval_seconds=poll)

    server = tfs.config.server
    return _run_daemon(
        tfs.config, reloader, tfs.ports_file,
        f"--rest_api_port {server.rest_port}, --port {server.grpc_port}",
        ssl_config_file=tfs.ssl_config_file,
        serve_rest=tfs.rest_api_enabled, metrics_path=tfs.metrics_path,
    )


def _run_daemon(
    config: Config,
    make_reloader: Callable[[Any], ConfigReloader | None],
    ports_file: Path | None,
    ports: str,
    ssl_config_file: Path | None = None,
    **options: Any,
) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the models, if there is a reloader."""
    from loader.app.parts import ports_tls

    tls = ports_tls(config.server.tls, ssl_config_file)  # bad certificates: before TF's import
    pools = config.tensorflow
    set_thread_pools(pools.intra_op_parallelism, pools.inter_op_parallelism)
    import_tensorflow()
    from loader.app.daemon import Daemon

    freeze_startup_objects()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        daemon = Daemon(config, tls=tls, **options)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {config.server.host} ({ports}): {exc.strerror or exc}"
        ) from None
    reloader = make_reloader(daemon)
    if reloader is not None:
        signal.signal(signal.SIGHUP, lambda *_: reloader.request("SIGHUP"))
    else:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        daemon.start(interrupted=stop)
    except Exception as exc:  # stop what did start, or its threads keep the process alive
        log.error("could not start: %s", exc)
        daemon.stop()
        _exit_past_abandoned_threads(code=1)
        return 1
    if reloader is not None:
        reloader.start()
    if ports_file and not stop.is_set():
        ports_json = {"rest_port": daemon.rest.port if daemon.rest else 0,
                      "grpc_port": daemon.grpc.port if daemon.grpc else 0}
        _write_atomically(ports_file, json.dumps(ports_json))
    # A wait with a timeout, not stop.wait(): a process-directed signal may land on any
    # thread that does not block it (TensorFlow's, gRPC's), and then nothing wakes the main
    # thread from a wait without one to run the Python handler. Seen once in CI: SIGTERM
    # never reached the handler in 60 s.
    while not stop.wait(0.5):
        pass
    log.info("stopping: answering requests in flight, then unloading")
    if reloader is not None:
        reloader.stop()
        reloader.join(10)
    daemon.stop()
    log.info("stopped")
    _exit_past_abandoned_threads()
    return 0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _exit_past_abandoned_threads(code: int = 0) -> None:
    """Exit now if a load is still stuck (in a download, say) after an orderly stop.

    Python joins every executor's worker threads at exit (daemon or not: a worker takes
    its flag from the thread that started it), so one stuck load would keep a stopped
    server's process alive past any orchestrator's grace period.
    """
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    # Idle pool workers told to exit are on their way out: give them a moment, so only a
    # thread really stuck (in a download, say) is reported.
    deadline = time.monotonic() + 1.0
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in others if t.is_alive()]
    if stuck:
        log.warning("exiting past %d thread(s) still running: %s",
                    len(stuck), ", ".join(sorted(t.name for t in stuck)))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _prepare_demo(args: argparse.Namespace) -> int:
    from loader.app.demo import prepare_demo_repository

    base = prepare_demo_repository(args.models_dir)
    print(f"demo model repository ready at {base}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from loader.app import inspect

    with inspect.local_version(args.path, endpoint_url=args.endpoint_url, region=args.region) as folder:
        import_tensorflow()
        if args.json:
            print(json.dumps(inspect.describe(folder), indent=2))
        else:
            print(inspect.show_text(folder))
    return 0


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from loader.app import inspect

    inputs = inspect.parse_inputs(args.input_exprs, args.inputs)
    tags = [t.strip() for t in args.tag_set.split(",")]
    with inspect.local_version(args.path, endpoint_url=args.endpoint_url, region=args.region) as folder:
        import_tensorflow()
        outputs = inspect.run(
            folder, args.signature_def, inputs, tags, prefer_tflite_model=args.prefer_tflite_model
        )
    for key, value in sorted(outputs.items()):
        print(f"Result for output key {key}:\n{value}")
        if args.outdir:
            Path(args.outdir).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.outdir) / f"{key}.npy", value)
    return 0


def _get_json(url: str, path: str, what: str) -> Any:
    """GET `url` + `path` as JSON; None (and one line on stderr) if it cannot be read."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}{path}", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"modelwatch: error: cannot read {what} from {url}: {exc}", file=sys.stderr)
        return None
    return response.json()


def _status(args: argparse.Namespace) -> int:
    document = _get_json(args.url, "/modelwatch/models", "the status")
    if document is None:
        return 1
    rows = [("MODEL", "VERSION", "STATE", "LABELS", "ERROR")]
    for model in document["models"]:
        by_version: dict[str, list[str]] = {}
        for label, version in model["labels"].items():
            by_version.setdefault(str(version), []).append(label)
        for v in model["versions"] or [{"version": "-", "state": "no versions yet", "status": {}}]:
            error = v["status"].get("error_message", "")
            rows.append((model["name"], v["version"], v["state"],
                         ",".join(sorted(by_version.get(v["version"], []))), error))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def _ray(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.server.tls is not None:  # rather than serve plain text where TLS was asked
        raise ConfigError(
            f"{args.config}: server.tls is not supported by `modelwatch ray` yet; terminate "
            "TLS in front of the cluster's balancer, or run `modelwatch serve`"
        )
    logged = [m.name for m in config.models if m.request_logging is not None]
    if logged:  # rather than drop the records a user asked for
        raise ConfigError(
            f"{args.config}: models[{logged[0]!r}].request_logging is not supported by "
            "`modelwatch ray` yet; run `modelwatch serve` to log requests"
        )
    try:
        from loader.cluster.application import serve_forever
        from loader.cluster.rollout import Bounds
    except ImportError as exc:
        raise ConfigError(f"Ray Serve is not installed ({exc}): pip install 'modelwatch[ray]'") from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    bounds = Bounds(args.hold_seconds, args.retry_seconds, args.replica_timeout_seconds)
    serve_forever(config, address=args.address, replicas=args.replicas, http_host=args.http_host,
                  http_port=args.http_port, node_ip=args.node_ip, bounds=bounds, stop=stop,
                  grpc_port=args.grpc_port)
    return 0


def _replicas(args: argparse.Namespace) -> int:
    document = _get_json(args.url, "/modelwatch/replicas", "the replicas")
    if document is None:
        return 1
    print(json.dumps(document, indent=2))
    return 0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="modelwatch",
        description="A TensorFlow model server that watches storage and hot-swaps versions.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the model server daemon",
        epilog="Or with TF Serving's flags instead: modelwatch serve --port=8500 "
        "--rest_api_port=8501 --model_name=NAME --model_base_path=PATH\n\n" + tfs_usage(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", default="config.yaml", help="path to config.yaml")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--rest-port", type=int, help="override server.rest_port (0: any free port)")
    serve.add_argument("--grpc-port", type=int, help="override server.grpc_port")
    serve.add_argument("--ports-file", help="write the bound ports here as JSON once serving")
    serve.set_defaults(run=_serve)
    inspect = commands.add_parser(
        "inspect",
        help="show a SavedModel's tag sets and signatures, and a TFLite model's (saved_model_cli show --all)"
    )
    inspect.add_argument("path", help="a version folder: local, or s3://, gs:// or az://bucket/prefix/model/1")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    run = commands.add_parser("run", help="run a signature once (saved_model_cli run)")
    run.add_argument("path", help="a version folder: local, or s3://, gs:// or az://bucket/prefix/model/1")
    run.add_argument("--signature_def", default="serving_default")
    run.add_argument("--tag_set", default="serve", help="comma-separated tags")
    run.add_argument("--input_exprs", help="'x=[[1.0]];y=np.ones((2,1))'")
    run.add_argument("--inputs", help="'x=a.npy;y=b.npz[key]'")
    run.add_argument("--outdir", help="also save each output as OUTDIR/<key>.npy")
    run.add_argument("--prefer_tflite_model", action="store_true",
                     help="run model.tflite where the folder also holds a SavedModel")
    for command in (inspect, run):
        command.add_argument("--endpoint-url", help="the store's endpoint: S3-compatible for "
                             "s3://, GCS for gs://, the account URL for az://")
        command.add_argument("--region", help="S3 region for s3:// paths")
    inspect.set_defaults(run=_inspect)
    run.set_defaults(run=_run)
    status = commands.add_parser("status", help="a running daemon's models, versions and states")
    status.add_argument("--url", default="http://127.0.0.1:8501", help="the daemon's REST address")
    status.set_defaults(run=_status)
    ray = commands.add_parser(
        "ray", help="serve on a Ray cluster with Ray Serve (needs modelwatch[ray])"
    )
    ray.add_argument("--config", default="config.yaml", help="path to config.yaml")
    ray.add_argument("--address", default="auto", help="the Ray cluster (default: auto)")
    ray.add_argument("--replicas", type=int, default=2, help="Serve replicas (default: 2)")
    ray.add_argument("--http-host", default="127.0.0.1",
                     help="the cluster's endpoint address (the balancer, on the head node)")
    ray.add_argument("--http-port", type=int, default=8000,
                     help="the cluster's REST port (default: 8000)")
    ray.add_argument("--grpc-port", type=int, default=8500,
                     help="the cluster's gRPC port, 0 for none (default: 8500)")
    ray.add_argument("--node-ip", help="this machine's Ray node address, if not the default")
    ray.add_argument("--hold-seconds", type=float, default=5.0,
                     help="every replica must hold requests within this, or a flip aborts")
    ray.add_argument("--retry-seconds", type=float, default=5.0,
                     help="the pause after an aborted flip")
    ray.add_argument("--replica-timeout-seconds", type=float, default=15.0,
                     help="a replica silent for this long is gone and no longer awaited")
    ray.set_defaults(run=_ray)
    replicas = commands.add_parser("replicas", help="a Ray Serve deployment's replicas and rollouts")
    replicas.add_argument("--url", default="http://127.0.0.1:8000",
                          help="the cluster's REST endpoint")
    replicas.set_defaults(run=_replicas)
    demo = commands.add_parser("prepare-demo", help="build the demo model repository")
    demo.add_argument("models_dir", nargs="?", default="models")
    demo.set_defaults(run=_prepare_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's and gRPC's C++ loggers write to stderr on import unless told not to.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    prefer_plain_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"] and is_tfs_style(argv[1:]) and not {"-h", "--help"} & set(argv):
        run = functools.partial(_serve_tfs, argv[1:])  # TF Serving's own flags
    else:
        args = parser().parse_args(argv)
        run = functools.partial(args.run, args)
    logging.basicConfig(
        level=os.environ.get("MODELWATCH_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every tick would log, and every tick skipped during a slow (failing) poll would warn.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    logging.getLogger("azure").setLevel(logging.WARNING)  # a dozen lines per request otherwise
    # TensorFlow's INFO lines ("Restoring parameters from ...") at every load say nothing
    # our own "state=AVAILABLE" line does not.
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(run())
    except ConfigError as exc:
        print(f"modelwatch: error: {exc}", file=sys.stderr)
        return 2
    except ServingError as exc:  # a model, input or storage problem the user can fix
        print(f"modelwatch: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
