"""Policies over real S3 listings: buckets built under moto's mock_aws, scanned by the S3
source, and the reported versions run through each selection policy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import boto3
import pytest
from moto import mock_aws

from loader.base import VersionRef
from loader.sources.base import ModelLocation
from loader.sources.s3_client import S3Store
from loader.sources.store_source import StoreSource
from policies.selection import All, Latest, Specific

COMPLETE = ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="policies")
        yield client


def put_version(s3, folder: str, files=COMPLETE) -> None:
    for name in files:
        s3.put_object(Bucket="policies", Key=f"models/m/{folder}/{name}", Body=b"x")


def ready_versions(s3) -> set[int]:
    reported: dict[str, Mapping[int, VersionRef]] = {}
    source = StoreSource(
        [ModelLocation("m", "s3://policies/models/m")],
        lambda model, versions: reported.__setitem__(model, versions),
        S3Store(s3), settle_seconds=0,
    )
    source.poll_once()
    return set(reported["m"])


@pytest.mark.parametrize(
    ("folders", "policy", "aspired"),
    [
        (["1", "2", "3"], Latest(1), {3}),
        (["1", "2", "3"], Latest(2), {2, 3}),
        (["1", "2", "3"], All(), {1, 2, 3}),
        (["1", "2", "3"], Specific.of([1, 3]), {1, 3}),
        (["1", "2", "3"], Specific.of([4]), set()),
        # Numeric order, zero padding, and names that are not versions.
        (["9", "10", "00000011", "latest", ".tmp-12", "12.tmp"], Latest(1), {11}),
        (["9", "10", "00000011", "latest"], Latest(2), {10, 11}),
    ],
)
def test_policies_on_s3_listings(s3, folders, policy, aspired):
    for folder in folders:
        put_version(s3, folder)
    assert policy(ready_versions(s3)) == aspired


def test_an_incomplete_newest_version_is_not_aspired(s3):
    put_version(s3, "1")
    put_version(s3, "2", files=COMPLETE[:2])  # the data shard is still uploading
    assert Latest(1)(ready_versions(s3)) == {1}
    put_version(s3, "2")
    assert Latest(1)(ready_versions(s3)) == {2}
