"""ConfigReloader against real files: an edit in place, a rename over the file, a
Kubernetes ConfigMap update (a `..data` symlink swapped to a new folder), a broken file."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from loader.config.reloader import ConfigReloader
from loader.config.schema import ConfigError, ModelConfig, load_config

WAIT = 10.0


def _config_text(*names: str) -> str:
    models = "".join(f"  - {{name: {n}, base_path: /models/{n}}}\n" for n in names)
    return f"models:\n{models}"


class Applied:
    """Records the model lists the reloader applies; `wait_for` blocks until one matches."""

    def __init__(self) -> None:
        self.lists: list[list[str]] = []
        self._changed = threading.Condition()

    def __call__(self, models: Sequence[ModelConfig]) -> None:
        with self._changed:
            self.lists.append([m.name for m in models])
            self._changed.notify_all()

    def wait_for(self, names: list[str]) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: names in self.lists, WAIT)


@pytest.fixture
def applied() -> Applied:
    return Applied()


def _start(path: Path, applied: Applied) -> Iterator[ConfigReloader]:
    reloader = ConfigReloader(path, load_config(path), applied, debounce_seconds=0.05)
    reloader.start()
    try:
        yield reloader
    finally:
        reloader.stop()
        reloader.join(10)


def test_an_edit_in_place_is_applied(tmp_path: Path, applied: Applied) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text("a"))
    for _ in _start(path, applied):
        path.write_text(_config_text("a", "b"))
        assert applied.wait_for(["a", "b"])


def test_a_file_renamed_over_the_config_is_applied(tmp_path: Path, applied: Applied) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text("a"))
    for _ in _start(path, applied):
        (tmp_path / ".config.yaml.swp").write_text(_config_text("c"))
        os.replace(tmp_path / ".config.yaml.swp", path)
        assert applied.wait_for(["c"])


def _configmap_update(mount: Path, stamp: str, text: str) -> None:
    """What the kubelet's atomic writer does: a new timestamped folder, a `..data_tmp`
    symlink to it renamed over `..data`, then the old folder removed."""
    folder = mount / f"..{stamp}"
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(folder.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    if old is not None:
        for child in (mount / old).iterdir():
            child.unlink()
        (mount / old).rmdir()


def test_a_configmap_update_is_applied(tmp_path: Path, applied: Applied) -> None:
    mount = tmp_path / "etc-modelwatch"
    mount.mkdir()
    _configmap_update(mount, "2026_12_06_10_00_00.1", _config_text("a"))
    os.symlink("..data/config.yaml", mount / "config.yaml")
    for _ in _start(mount / "config.yaml", applied):
        _configmap_update(mount, "2026_12_06_10_05_00.2", _config_text("a", "d"))
        assert applied.wait_for(["a", "d"])
        _configmap_update(mount, "2026_12_06_10_10_00.3", _config_text("d"))
        assert applied.wait_for(["d"])


def test_a_broken_file_keeps_the_running_config(tmp_path: Path, applied: Applied) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text("a"))
    for reloader in _start(path, applied):
        path.write_text("models: [{name: 'bad name!', base_path: /x}]\n")
        assert not reloader.reload("test")
        path.write_text(_config_text("e"))
        assert applied.wait_for(["e"])
        assert ["bad name!"] not in applied.lists


def test_models_the_daemon_refuses_keep_the_running_config(tmp_path: Path) -> None:
    # The daemon refuses, before it changes anything, a request log it cannot write.
    def refuse(models: Sequence[ModelConfig]) -> None:
        raise ConfigError("request_logging.filename_prefix: cannot make its folder")

    path = tmp_path / "config.yaml"
    path.write_text(_config_text("a"))
    reloader = ConfigReloader(path, load_config(path), refuse, debounce_seconds=0.05)
    path.write_text(_config_text("b"))
    assert not reloader.reload("test")
    assert not reloader.reload("test")  # still the old config: tried again, not taken as done
