"""The command line as a user runs it: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("models:\n  - {name: m, base_path: x, version_policy: {newest: {}}}\n",
         "models[0].version_policy.newest is not a known key"),
        ("server: {rest_port: many}\n", "server.rest_port: input should be a valid integer"),
    ],
)
def test_a_bad_config_exits_2_with_one_sentence_and_no_traceback(tmp_path, text, key):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_named(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(f"server: {{rest_port: {port}}}\n")
        result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "server.rest_port" in result.stderr and "Traceback" not in result.stderr
