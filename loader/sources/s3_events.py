"""S3 event notifications through SQS: a new version is seen within about a second.

S3 sends an event to an SQS queue whenever an object is created or deleted; this listener
long-polls the queue and asks the S3 source to list just the models the events touch, at
once and again after the settle period (so a version that completes is reported without
waiting for the next regular poll). Polling stays on as the safety net: delivery is at
least once and can be late or lost, and an event only ever triggers a listing, so a
duplicate or a stray event costs one listing and changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import unquote_plus

log = logging.getLogger("modelwatch.source.s3_events")


class PollTarget(Protocol):
    def models_under(self, bucket: str, key: str) -> list[str]: ...

    def poll_models(self, names: Iterable[str]) -> None: ...


def changed_objects(body: str) -> list[tuple[str, str]]:
    """(bucket, key) of every S3 record in one SQS message body; [] for S3's test event.

    Accepts S3's own message and the same wrapped in an SNS envelope. Keys arrive
    URL-encoded (a space as "+"), so they are decoded with unquote_plus.
    """
    document = json.loads(body)
    if isinstance(document, dict) and document.get("Type") == "Notification":
        document = json.loads(document.get("Message", "{}"))  # S3 -> SNS -> SQS
    if not isinstance(document, dict) or document.get("Event") == "s3:TestEvent":
        return []
    found = []
    for record in document.get("Records", []):
        if record.get("eventSource") != "aws:s3":
            continue
        s3 = record.get("s3", {})
        found.append((s3["bucket"]["name"], unquote_plus(s3["object"]["key"])))
    return found


class S3EventListener:
    """Consumes an SQS queue of S3 notifications and triggers listings of the models touched."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        source: PollTarget,
        *,
        settle_seconds: float,
        wait_time_seconds: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._source = source
        self._settle = settle_seconds
        self._wait = wait_time_seconds
        self._clock = clock
        self._again: dict[str, float] = {}  # model -> when to list it once more
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="modelwatch-s3-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = self._receive()
            except Exception as error:  # SQS down or misconfigured: polling still runs
                if not self._failing:
                    log.warning("cannot read S3 events from %s: %s", self._queue_url, error)
                    self._failing = True
                self._stopping.wait(5.0)
                continue
            if self._failing:
                log.info("reading S3 events from %s again", self._queue_url)
                self._failing = False
            models = self._models_in(messages)
            due = self._clock()
            models |= {m for m, when in self._again.items() if when <= due}
            for model in models:
                self._again.pop(model, None)
            if models:
                self._source.poll_models(models)
                for model in models:
                    self._again.setdefault(model, self._clock() + self._settle)
            self._delete(messages)

    def _receive(self) -> list[dict[str, Any]]:
        # Wait no longer than the next follow-up listing is due (SQS counts whole seconds).
        wait = self._wait
        if self._again:
            remaining = min(self._again.values()) - self._clock()
            wait = 0 if remaining <= 0 else min(wait, math.ceil(remaining))
        answer = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait
        )
        return list(answer.get("Messages", []))

    def _models_in(self, messages: list[dict[str, Any]]) -> set[str]:
        models: set[str] = set()
        for message in messages:
            try:
                objects = changed_objects(message.get("Body", ""))
            except (ValueError, KeyError, TypeError) as error:
                log.warning("ignoring an SQS message that is not an S3 event: %s", error)
                continue
            for bucket, key in objects:
                models.update(self._source.models_under(bucket, key))
        return models

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
        except Exception as error:  # they come back later: harmless, events are idempotent
            log.warning("cannot delete handled S3 events from %s: %s", self._queue_url, error)
