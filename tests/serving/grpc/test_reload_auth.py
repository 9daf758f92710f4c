"""Who may reload: a token when one is set, loopback only when none is."""

from __future__ import annotations

import pytest

from loader.base import Code, ServingError
from loader.serving.grpc.reload_auth import ReloadGuard, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("::", False), ("example.org", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def check(guard: ReloadGuard, metadata) -> Code:
    try:
        guard.check(metadata)
    except ServingError as error:
        return error.code
    return Code.OK


@pytest.mark.parametrize(
    ("token", "host", "metadata", "code"),
    [
        (None, "127.0.0.1", [], Code.OK),
        (None, "0.0.0.0", [], Code.PERMISSION_DENIED),
        (None, "0.0.0.0", [("authorization", "Bearer anything")], Code.PERMISSION_DENIED),
        ("s3cret", "0.0.0.0", [("authorization", "Bearer s3cret")], Code.OK),
        ("s3cret", "0.0.0.0", [("Authorization", "bearer s3cret")], Code.OK),
        ("s3cret", "127.0.0.1", [], Code.UNAUTHENTICATED),  # a token binds on loopback too
        ("s3cret", "0.0.0.0", [("authorization", "Bearer wrong")], Code.UNAUTHENTICATED),
        ("s3cret", "0.0.0.0", [("authorization", "Basic s3cret")], Code.UNAUTHENTICATED),
        ("s3cret", "0.0.0.0", [("x-other", "Bearer s3cret")], Code.UNAUTHENTICATED),
        ("s3cret", "0.0.0.0", [("authorization", b"Bearer s3cret")], Code.OK),
    ],
)
def test_reload_guard(token, host, metadata, code):
    assert check(ReloadGuard(token, host), metadata) is code


def test_the_token_is_never_in_a_message():
    with pytest.raises(ServingError) as caught:
        ReloadGuard("s3cret", "0.0.0.0").check([("authorization", "Bearer wrong")])
    assert "s3cret" not in caught.value.message
