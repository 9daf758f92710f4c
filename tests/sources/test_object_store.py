"""Store URIs and what the shared object store module makes of them (listings are tested
through the source and the fetcher, per store: test_s3.py, test_gcs.py, test_azure.py)."""

from __future__ import annotations

import pytest

from loader.sources.object_store import parse_store_uri, store_scheme, version_folders


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/prefix/model", ("s3", "bucket", "prefix/model/")),
        ("s3://bucket/prefix/model/", ("s3", "bucket", "prefix/model/")),
        ("s3://bucket/model", ("s3", "bucket", "model/")),
        ("s3://bucket", ("s3", "bucket", "")),
        ("s3://bucket/", ("s3", "bucket", "")),
        ("gs://bucket/models/m", ("gs", "bucket", "models/m/")),
        ("az://container/m", ("az", "container", "m/")),
    ],
)
def test_parse_store_uri(uri: str, expected: tuple[str, str, str]) -> None:
    assert parse_store_uri(uri) == expected
    assert store_scheme(uri) == expected[0]


@pytest.mark.parametrize(
    "uri",
    ["/local/models", "hdfs://bucket/m", "s3://", "s3:///m", "s3://b/m", "s3://bucket/a//b",
     "gs://", "az://c/m"],
)
def test_parse_store_uri_refuses_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="storage URI|bucket|segment"):
        parse_store_uri(uri)


@pytest.mark.parametrize("path", ["/local/models", "models/m", "hdfs://host/m", "file:///m"])
def test_a_local_or_unknown_path_has_no_store(path: str) -> None:
    assert store_scheme(path) is None


def test_version_folders_keep_the_first_spelling_of_a_number() -> None:
    children = ["m/.tmp/", "m/01/", "m/1/", "m/10/", "m/x/"]
    assert version_folders("m/", children) == {1: "m/01/", 10: "m/10/"}
