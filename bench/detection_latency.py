"""Detection latency: how long from a version being published to it being served.

Local: a finished version folder is renamed into place. S3 (moto's real HTTP server on
127.0.0.1), Google Cloud Storage (gcp-storage-emulator, in this process) and Azure Blob
Storage (Azurite, from `make azurite`): the objects of a version are uploaded. For each new
version the script polls the daemon's REST status over loopback every 2 ms and records when
the version is first seen (LOADING) and when it serves (AVAILABLE). The daemon runs as a
subprocess with the given poll interval and the default settle rules. For each store it also
records what a poll of one model with two versions costs in requests (StoreSource's
`requests_last_poll`, in this process): cold (everything listed) and steady.

    .venv/bin/python bench/detection_latency.py [--versions 10] [--poll-interval 1.0]
        [--stores local,s3,gs,az]

Writes bench/results/detection_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_process import DaemonProcess  # noqa: E402  (the repo's daemon harness)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}


def watch_version(d: DaemonProcess, model: str, version: int, t0: float, timeout: float = 60) -> dict[str, float]:
    """Seconds from t0 until `version` is first listed, and until it is AVAILABLE."""
    seen = None
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        state = d.states(model).get(version)
        now = time.monotonic()
        if state is not None and seen is None:
            seen = now - t0
        if state == "AVAILABLE":
            return {"detected_s": seen if seen is not None else now - t0, "served_s": now - t0}
        time.sleep(0.002)
    raise RuntimeError(f"version {version} was not served within {timeout}s:\n{d.log()[-3000:]}")


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(samples)}
    for key in ("detected_s", "served_s"):
        values = sorted(s[key] for s in samples)
        out[key] = {
            "median": round(statistics.median(values), 4),
            "p90": round(values[max(0, int(len(values) * 0.9) - 1)], 4),
            "max": round(values[-1], 4),
        }
    return out


def config(work: Path, poll: float, models: list[dict[str, Any]], endpoint: str | None = None) -> dict[str, Any]:
    storage: dict[str, Any] = {"cache_dir": str(work / "cache")}
    if endpoint:
        storage["s3"] = {"endpoint_url": endpoint, "region": "us-east-1"}
    return {"server": {"host": "127.0.0.1", "rest_port": 0, "grpc_port": 0},
            "storage": storage, "watch": {"poll_interval_seconds": poll}, "models": models}


def bench_local(work: Path, model: Path, versions: int, poll: float) -> list[dict[str, float]]:
    base = work / "local" / "m"
    base.mkdir(parents=True)
    shutil.copytree(model, base / "1")
    d = DaemonProcess(work, config(work, poll, [{"name": "m", "base_path": str(base)}])).start()
    try:
        d.wait_for_states("m", {1: "AVAILABLE"})
        samples = []
        for version in range(2, versions + 2):
            tmp = base / f".tmp-{version}"
            shutil.copytree(model, tmp)
            t0 = time.monotonic()
            os.rename(tmp, base / str(version))
            samples.append(watch_version(d, "m", version, t0))
        return samples
    finally:
        d.stop()


def poll_requests(scheme: str, storage: Any, uri: str) -> dict[str, int]:
    """Requests of a cold poll and of a steady one, for the model at `uri` (settle 0: the
    first listing settles, so the second poll is steady)."""
    from loader.app.parts import make_store
    from loader.sources.base import ModelLocation
    from loader.sources.store_source import StoreSource

    source = StoreSource([ModelLocation("m", uri)], lambda model, versions: None,
                         make_store(scheme, storage), settle_seconds=0)
    source.poll_once()
    cold = source.requests_last_poll
    source.poll_once()
    return {"cold": cold, "steady": source.requests_last_poll}


def bench_emulated(work: Path, model: Path, versions: int, poll: float, scheme: str) -> dict[str, Any]:
    """The daemon on gs:// or az:// against the store's emulator (tests/object_stores.py)."""
    from loader.config.schema import StorageConfig
    from tests.object_stores import AZURITE, Bucket, azurite, environ, gcs_emulator

    if scheme == "az" and not AZURITE.exists():
        return {"skipped": f"Azurite is not installed at {AZURITE} (make azurite)"}
    place = work / scheme
    place.mkdir()
    emulator = gcs_emulator() if scheme == "gs" else azurite(place)
    with emulator as endpoint:
        key = "STORAGE_EMULATOR_HOST" if scheme == "gs" else "AZURE_STORAGE_CONNECTION_STRING"
        bucket = Bucket(scheme, "bench", {key: endpoint})
        bucket.create()
        bucket.upload(model, "m/1")
        d = DaemonProcess(place, config(place, poll, [{"name": "m", "base_path": bucket.uri("m")}]),
                          env=bucket.env).start()
        try:
            d.wait_for_states("m", {1: "AVAILABLE"})
            samples = []
            for version in range(2, versions + 2):
                bucket.upload(model, f"m/{version}")
                samples.append(watch_version(d, "m", version, time.monotonic()))
        finally:
            d.stop()
        bucket.delete("m/")
        bucket.upload(model, "m/1")
        bucket.upload(model, "m/2")
        with environ(bucket.env):
            requests = poll_requests(scheme, StorageConfig(), bucket.uri("m"))
    return {**summary(samples), "requests_per_poll": requests}


def bench_s3(work: Path, model: Path, versions: int, poll: float) -> dict[str, Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    files = sorted(p for p in model.rglob("*") if p.is_file())

    def upload(version: int) -> None:
        for path in files:
            s3.upload_file(str(path), "bench", f"m/{version}/{path.relative_to(model).as_posix()}")

    upload(1)
    work = work / "s3"
    work.mkdir()
    d = DaemonProcess(work, config(work, poll, [{"name": "m", "base_path": "s3://bench/m"}], endpoint),
                      env=CREDENTIALS).start()
    try:
        d.wait_for_states("m", {1: "AVAILABLE"})
        samples = []
        for version in range(2, versions + 2):
            upload(version)
            samples.append(watch_version(d, "m", version, time.monotonic()))
        d.stop()
        from loader.config.schema import S3Config, StorageConfig

        s3.create_bucket(Bucket="cost")
        for version in (1, 2):
            for path in files:
                s3.upload_file(str(path), "cost", f"m/{version}/{path.relative_to(model).as_posix()}")
        storage = StorageConfig(s3=S3Config(endpoint_url=endpoint, region="us-east-1"))
        return {**summary(samples), "requests_per_poll": poll_requests("s3", storage, "s3://cost/m")}
    finally:
        d.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--stores", default="local,s3,gs,az",
                        help="which of local, s3, gs, az to measure (comma-separated)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "detection_latency.json"))
    args = parser.parse_args()
    from loader.app.demo import write_linear_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        write_linear_model(model, slope=0.5, intercept=2.0)
        stores = args.stores.split(",")
        measured: dict[str, Any] = {}
        if "local" in stores:
            measured["local_rename"] = summary(
                bench_local(work, model, args.versions, args.poll_interval))
        if "s3" in stores:
            measured["s3_upload"] = bench_s3(work, model, args.versions, args.poll_interval)
        for scheme, name in (("gs", "gcs_upload"), ("az", "azure_upload")):
            if scheme in stores:
                measured[name] = bench_emulated(work, model, args.versions, args.poll_interval,
                                                scheme)
    result = {
        "benchmark": "detection_latency",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "method": "publish a version, poll GET /v1/models/m every 2 ms over loopback; "
                  "detected = first listed (LOADING), served = AVAILABLE; stores on their "
                  "emulators on 127.0.0.1 (moto server, gcp-storage-emulator, Azurite); "
                  "requests_per_poll: StoreSource.requests_last_poll for one model with two "
                  "versions, cold then steady",
        "poll_interval_seconds": args.poll_interval,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        **measured,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
