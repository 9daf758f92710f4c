"""The process's and the machine's memory, as /proc and the cgroup files tell them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loader.manager import process_memory
from tests.daemon_process import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux only")


def _vm_rss(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_resident_bytes_agrees_with_vmrss_and_sees_an_allocation():
    before = process_memory.resident_bytes()
    assert before is not None
    assert abs(before - _vm_rss("self")) < 8 << 20
    block = bytearray(64 << 20)  # zero-filled: its pages are touched, so resident
    after = process_memory.resident_bytes()
    assert after is not None and after - before >= 60 << 20
    del block


def test_resident_bytes_of_another_process_and_of_none():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        # an interpreter holds megabytes once it has started (right after the fork, a page)
        wait_until(lambda: (process_memory.resident_bytes(child.pid) or 0) > 1 << 20, 10,
                   "the child's resident memory")
        assert abs((process_memory.resident_bytes(child.pid) or 0) - _vm_rss(child.pid)) < 1 << 20
    finally:
        child.communicate(b"")
    assert process_memory.resident_bytes(2**22 + 12345) is None  # no such pid


def test_the_peak_follows_an_allocation_and_resets():
    if not process_memory.reset_peak():
        pytest.skip("this kernel cannot reset the peak")
    start = process_memory.peak_resident_bytes()
    block = bytearray(64 << 20)
    del block
    peak = process_memory.peak_resident_bytes()
    assert start is not None and peak is not None and peak - start >= 60 << 20
    assert process_memory.reset_peak()
    after = process_memory.peak_resident_bytes()
    assert after is not None and after < peak


def test_the_machine_memory_is_at_most_memtotal_and_the_default_limit_a_share_of_it():
    total = process_memory.machine_memory_bytes()
    meminfo = next(
        int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert total is not None and 0 < total <= meminfo
    limit = process_memory.default_limit_bytes()
    assert limit == int(total * process_memory.DEFAULT_LIMIT_SHARE)
    assert process_memory.default_limit_bytes(0.5) == int(total * 0.5)


def test_a_cgroup_limit_below_memtotal_is_the_machine_memory(tmp_path, monkeypatch):
    # The cgroup files are read where the kernel puts them; point the reader at a copy.
    cgroup = tmp_path / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text("1073741824\n")
    real_path = process_memory.Path

    def rooted(path: str | os.PathLike[str]) -> Path:
        text = str(path)
        return real_path(tmp_path / text.lstrip("/")) if text.startswith("/sys/") else real_path(text)

    monkeypatch.setattr(process_memory, "Path", rooted)
    monkeypatch.setattr(process_memory, "_own_cgroup", lambda hierarchy: "")
    assert process_memory.machine_memory_bytes() == 1 << 30
    (cgroup / "memory.max").write_text("max\n")  # no cgroup limit: MemTotal
    assert process_memory.machine_memory_bytes() > 1 << 30
