"""S3 URIs and what the S3 client module makes of them (listings are tested through the
source and the fetcher, in test_s3.py and test_s3_fetch.py)."""

from __future__ import annotations

import pytest

from loader.sources.s3_client import parse_s3_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/prefix/model", ("bucket", "prefix/model/")),
        ("s3://bucket/prefix/model/", ("bucket", "prefix/model/")),
        ("s3://bucket/model", ("bucket", "model/")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["/local/models", "gs://bucket/m", "s3://", "s3:///m", "s3://b/m", "s3://bucket/a//b"]
)
def test_parse_s3_uri_refuses_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="s3|S3|segment"):
        parse_s3_uri(uri)
