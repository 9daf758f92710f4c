"""S3 poll cost at scale: ListObjectsV2 requests and seconds per poll cycle.

moto's ThreadedMotoServer runs on 127.0.0.1 in a child process (its own GIL, as a real
endpoint would be) holding M models x V versions x F files of one byte each: a complete
version is `saved_model.pb`, plus `variables/variables.index` and one data shard from
three files up, plus `assets/extra-k` files up to F. `loader.sources.store_source.StoreSource`
runs in this process with the daemon's own client (`make_s3_client`) and a callback that only
counts; `poll_once()` is called on the daemon's schedule (a poll starts `--interval` s
after the previous one started, or at once if that one ran longer), and each poll's
`requests_last_poll` and `last_poll_seconds` are recorded:

- poll 1 (cold): every model's version folders and every version's objects are listed;
- poll 2: every version is listed again and settles (same listing a poll interval later);
- polls 3.. (steady): one listing per model, plus the settled versions whose periodic
  re-verification (1 in 30 polls, spread by a hash) falls on that poll.

The expected counts (M + M x V cold; M + due re-verifications steady) are computed from the
same rules and recorded beside the measured ones. Each (models, files) pair runs on a fresh
source; smaller model counts reuse the first models of the largest.

Layout: by default each model has its own bucket, because moto's ListObjectsV2 walks every
key of the bucket on each call (moto/s3/models.py `list_objects`), so in one bucket of
200,000 objects the poll's duration would measure moto's scan, not the poll; real S3 lists
a page in time independent of the bucket's size. `--layout one-bucket` puts every model
under one bucket (same request counts). `--setup http` (default) uploads through the S3 API
with `--upload-threads` threads; `--setup direct` writes the same objects into moto's
in-memory store in the server process, for quick runs.

    .venv/bin/python bench/s3_poll_cost.py [--models 100,1000] [--versions 20] [--files 10,1]
        [--steady-polls 10]

Writes bench/results/s3_poll_cost.json.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import default_out, parse_list, write_result  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
REVERIFY_EVERY = 30  # StoreSource's default


def version_files(count: int) -> list[str]:
    """The relative paths of a complete version of `count` files."""
    files = ["saved_model.pb"]
    if count >= 3:
        files += ["variables/variables.index", "variables/variables.data-00000-of-00001"]
    files += [f"assets/extra-{k}" for k in range(count - len(files))]
    return files[:count]


def model_name(i: int) -> str:
    return f"m{i:04d}"


def location(layout: str, files: int, i: int) -> tuple[str, str]:
    """(bucket, model prefix) of model `i` in the data set of `files` files per version."""
    if layout == "bucket-per-model":
        return f"mwb-f{files}-{model_name(i)}", ""
    return f"mwb-f{files}", f"{model_name(i)}/"


# ---- moto in a child process -----------------------------------------------------------


def _serve(ready: Any, commands: Any) -> None:
    """The child: a ThreadedMotoServer, and direct writes into its store when asked."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    ready.send(server.get_host_and_port())
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    while True:
        command = commands.recv()
        if command[0] == "stop":
            break
        _, bucket, keys = command
        for key in keys:
            backend.put_object(bucket, key, b"x")
        commands.send(len(keys))
    server.stop()


class MotoProcess:
    """moto's S3 server on 127.0.0.1 in a child process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, ready_child = context.Pipe()
        self._commands, commands_child = context.Pipe()
        self._process = context.Process(target=_serve, args=(ready_child, commands_child),
                                        name="moto-s3", daemon=True)
        self.endpoint = ""

    def start(self, timeout: float = 120) -> MotoProcess:
        self._process.start()
        if not self._ready.poll(timeout):
            raise RuntimeError("moto's server did not start")
        host, port = self._ready.recv()
        self.endpoint = f"http://{host}:{port}"
        return self

    def put_direct(self, bucket: str, keys: list[str]) -> None:
        self._commands.send(("put", bucket, keys))
        self._commands.recv()

    def stop(self) -> None:
        if self._process.is_alive():
            self._commands.send(("stop",))

    def join(self, timeout: float | None = None) -> None:
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ---- setup ---------------------------------------------------------------------------


def populate(moto: MotoProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Create every bucket and object of every data set; how long it took."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          config=Config(max_pool_connections=args.upload_threads,
                                        retries={"mode": "standard", "max_attempts": 5}))
    most = max(args.models)
    buckets: dict[str, list[str]] = {}
    for files in args.files:
        names = version_files(files)
        for i in range(most):
            bucket, prefix = location(args.layout, files, i)
            keys = buckets.setdefault(bucket, [])
            keys += [f"{prefix}{v}/{name}" for v in range(1, args.versions + 1) for name in names]
    objects = sum(len(keys) for keys in buckets.values())
    print(f"setup: {len(buckets)} buckets, {objects} objects ({args.setup})", file=sys.stderr)
    started = time.monotonic()
    with ThreadPoolExecutor(args.upload_threads) as pool:
        list(pool.map(lambda b: client.create_bucket(Bucket=b), buckets))
        if args.setup == "direct":
            for bucket, keys in buckets.items():
                moto.put_direct(bucket, keys)
        else:
            jobs = [(bucket, key) for bucket, keys in buckets.items() for key in keys]
            list(pool.map(lambda job: client.put_object(Bucket=job[0], Key=job[1], Body=b"x"),
                          jobs, chunksize=256))
    seconds = time.monotonic() - started
    print(f"setup took {seconds:.1f} s", file=sys.stderr)
    return {"method": args.setup, "buckets": len(buckets), "objects": objects,
            "object_bytes": 1, "upload_threads": args.upload_threads,
            "seconds": round(seconds, 2), "objects_per_s": round(objects / seconds, 1)}


# ---- polling ---------------------------------------------------------------------------


def expected_requests(models: int, versions: int, poll_index: int, cold: bool) -> int:
    """What a poll should cost by StoreSource's rules (each listing is one page here)."""
    from loader.sources.store_source import reverify_due

    if cold:
        return models + models * versions
    due = sum(reverify_due(poll_index, model_name(i), v, REVERIFY_EVERY)
              for i in range(models) for v in range(1, versions + 1))
    return models + due


def measure(endpoint: str, layout: str, models: int, versions: int, files: int,
            polls: int, interval: float) -> dict[str, Any]:
    from loader.base import VersionRef
    from loader.sources.base import ModelLocation
    from loader.sources.s3_client import S3Store, make_s3_client
    from loader.sources.store_source import StoreSource

    reported: dict[str, int] = {}

    def callback(model: str, ready: Mapping[int, VersionRef]) -> None:
        reported[model] = len(ready)

    locations = []
    for i in range(models):
        bucket, prefix = location(layout, files, i)
        locations.append(ModelLocation(model_name(i), f"s3://{bucket}/{prefix}"))
    source = StoreSource(locations, callback, S3Store(make_s3_client(endpoint, "us-east-1")),
                         poll_interval_seconds=interval, reverify_every=REVERIFY_EVERY)
    rows = []
    for index in range(1, polls + 1):
        started = time.monotonic()
        reported.clear()
        source.poll_once()
        per_request = source.last_poll_seconds / max(1, source.requests_last_poll)
        rows.append({
            "poll": index,
            "requests": source.requests_last_poll,
            "expected_requests": expected_requests(models, versions, index, cold=index <= 2),
            "seconds": round(source.last_poll_seconds, 3),
            "ms_per_request": round(per_request * 1000, 2),
            "ready_versions_reported": sum(reported.values()),
        })
        print(f"  M={models} F={files} poll {index}: {rows[-1]}", file=sys.stderr)
        time.sleep(max(0.0, started + interval - time.monotonic()))
    source.stop()
    steady = rows[2:]
    return {
        "models": models, "versions": versions, "files_per_version": files,
        "objects": models * versions * files,
        "cold": rows[0],
        "settling": rows[1],
        "steady": {
            "polls": len(steady),
            "requests_mean": round(statistics.mean(r["requests"] for r in steady), 1),
            "requests_min": min(r["requests"] for r in steady),
            "requests_max": max(r["requests"] for r in steady),
            "expected_requests_mean": round(
                statistics.mean(r["expected_requests"] for r in steady), 1),
            "seconds_mean": round(statistics.mean(r["seconds"] for r in steady), 3),
            "seconds_max": max(r["seconds"] for r in steady),
            "ms_per_request_mean": round(statistics.mean(r["ms_per_request"] for r in steady), 2),
            "requests_per_model": round(
                statistics.mean(r["requests"] for r in steady) / models, 3),
        },
        "all_versions_ready": all(r["ready_versions_reported"] == models * versions
                                  for r in rows[1:]),
        "polls": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=parse_list, default=[100, 1000],
                        help="model counts to measure (comma-separated)")
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--files", type=parse_list, default=[10, 1],
                        help="files per version (comma-separated), one data set each")
    parser.add_argument("--steady-polls", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="poll interval (the settle time is 0.9 of it)")
    parser.add_argument("--layout", choices=("bucket-per-model", "one-bucket"),
                        default="bucket-per-model")
    parser.add_argument("--setup", choices=("http", "direct"), default="http")
    parser.add_argument("--upload-threads", type=int, default=32)
    parser.add_argument("--out", default=default_out("s3_poll_cost"))
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    logging.basicConfig(level=logging.WARNING)

    moto = MotoProcess().start()
    try:
        setup = populate(moto, args)
        runs = [measure(moto.endpoint, args.layout, m, args.versions, f,
                        args.steady_polls + 2, args.interval)
                for f in args.files for m in sorted(args.models)]
    finally:
        moto.stop()
        moto.join(60)
    write_result(args.out, {
        "benchmark": "s3_poll_cost",
        "parameters": {"models": args.models, "versions": args.versions, "files": args.files,
                       "steady_polls": args.steady_polls, "poll_interval_s": args.interval,
                       "layout": args.layout, "reverify_every": REVERIFY_EVERY},
        "method": "moto ThreadedMotoServer in a child process on 127.0.0.1; StoreSource.poll_once "
                  "in this process on the daemon's schedule; requests = requests_last_poll "
                  "(ListObjectsV2 pages), seconds = last_poll_seconds; poll 1 cold, poll 2 "
                  "settles, later polls steady",
        "setup": setup,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
