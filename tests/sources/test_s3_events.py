"""S3 event notifications: the message format, and moto's bucket -> SQS notifications
driving the S3 source with regular polling effectively off."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping

import boto3
import pytest
from moto import mock_aws

from loader.base import VersionRef
from loader.sources.base import ModelLocation
from loader.sources.s3_client import S3Store
from loader.sources.s3_events import S3EventListener, changed_objects
from loader.sources.store_source import StoreSource


def s3_event(bucket: str, key: str) -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
    }]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (s3_event("b", "models/m/1/saved_model.pb"), [("b", "models/m/1/saved_model.pb")]),
        (s3_event("b", "my+models/m%201/x"), [("b", "my models/m 1/x")]),  # unquote_plus
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}), []),
        (json.dumps({"Type": "Notification", "Message": s3_event("b", "k")}), [("b", "k")]),  # via SNS
        (json.dumps({"Records": [{"eventSource": "aws:sqs"}]}), []),
    ],
)
def test_changed_objects(body, expected):
    assert changed_objects(body) == expected


@pytest.mark.parametrize("body", ["not json", json.dumps({"Records": [{"eventSource": "aws:s3"}]})])
def test_malformed_messages_raise_clear_errors(body):
    with pytest.raises((ValueError, KeyError)):
        changed_objects(body)


class Reports:
    def __init__(self) -> None:
        self.latest: dict[str, set[int]] = {}
        self.refs: dict[str, dict[int, VersionRef]] = {}
        self.cond = threading.Condition()

    def __call__(self, model: str, versions: Mapping[int, VersionRef]) -> None:
        with self.cond:
            self.latest[model] = set(versions)
            self.refs[model] = dict(versions)
            self.cond.notify_all()

    def wait_until(self, predicate) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, 15)

    def wait_for(self, model: str, expected: set[int]) -> bool:
        return self.wait_until(lambda: self.latest.get(model) == expected)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        s3.create_bucket(Bucket="modelstore")
        queue = sqs.create_queue(QueueName="model-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket="modelstore", NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        })
        yield s3, sqs, queue


def test_an_uploaded_version_is_reported_without_waiting_for_a_poll(aws):
    s3, sqs, queue = aws
    reports = Reports()
    source = StoreSource([ModelLocation("m", "s3://modelstore/models/m"),
                          ModelLocation("other", "s3://modelstore/models/other")],
                         reports, S3Store(s3), poll_interval_seconds=3600, settle_seconds=0.3)
    source.poll_once()  # the daemon's first poll: nothing there yet
    assert reports.latest == {"m": set(), "other": set()}
    listener = S3EventListener(sqs, queue, source, settle_seconds=0.3)
    listener.start()
    try:
        for name in ("saved_model.pb", "variables/variables.index",
                     "variables/variables.data-00000-of-00001"):
            s3.put_object(Bucket="modelstore", Key=f"models/m/1/{name}", Body=b"x")
        assert reports.wait_for("m", {1})  # no regular poll in the next hour
        # A changed file is re-listed at once (here: a new fingerprint for version 1).
        before = reports.refs["m"][1].fingerprint
        s3.put_object(Bucket="modelstore", Key="models/m/1/saved_model.pb", Body=b"fixed")
        assert reports.wait_until(lambda: reports.refs["m"][1].fingerprint != before)
        # Deletions are heard too; a duplicate of a handled event changes nothing.
        sqs.send_message(QueueUrl=queue, MessageBody=s3_event("modelstore", "models/m/1/saved_model.pb"))
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="modelstore", Prefix="models/m/1/"):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket="modelstore", Key=item["Key"])
        assert reports.wait_for("m", set())
    finally:
        listener.stop()
        listener.join(10)
    assert source.models_under("modelstore", "models/other/3/x") == ["other"]
    assert source.models_under("modelstore", "models/mx/1") == []
