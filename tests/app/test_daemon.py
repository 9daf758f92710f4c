"""The daemon's composition, in process: what it refuses before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.app.daemon import Daemon
from loader.config.schema import ConfigError, parse_config


def test_a_request_log_folder_that_cannot_be_made_refuses_the_config(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    config = parse_config({
        "server": {"rest_port": 0, "grpc_port": 0},
        "models": [{"name": "m", "base_path": str(tmp_path / "m"), "request_logging": {
            "sampling_rate": 1, "filename_prefix": str(tmp_path / "a_file" / "m")}}],
    })
    with pytest.raises(ConfigError, match=r"request_logging.filename_prefix: cannot make its folder \(File exists: "):
        Daemon(config)
