"""This process's resident memory and the machine's, read from /proc and the cgroup files.

Linux only; elsewhere every figure is None and the memory limit has nothing to check
against (the daemon says so at start). Reads are a few microseconds: the manager takes one
before each load decision and around each load.
"""

from __future__ import annotations

import os
from pathlib import Path

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
DEFAULT_LIMIT_SHARE = 0.8  # of min(cgroup limit, MemTotal): see the README


def resident_bytes(pid: int | str = "self") -> int | None:
    """The resident set size of a process (its statm's second field), or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def peak_resident_bytes() -> int | None:
    """This process's peak resident size since start or the last `reset_peak` (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def reset_peak() -> bool:
    """Start a new peak (VmHWM) from the present size; False where Linux cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # Linux >= 4.0: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _first_number(paths: tuple[str, ...]) -> int | None:
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def machine_memory_bytes() -> int | None:
    """The memory this process may use: the smaller of its cgroup's limit (v2 `memory.max`,
    or v1 `memory.limit_in_bytes`) and the machine's MemTotal; None if neither is known."""
    cgroup = _first_number((
        f"/sys/fs/cgroup{_own_cgroup('0::')}/memory.max",
        "/sys/fs/cgroup/memory.max",
        f"/sys/fs/cgroup/memory{_own_cgroup(':memory:')}/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ))
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    known = [n for n in (cgroup, total) if n is not None and n > 0]
    return min(known) if known else None


def _own_cgroup(hierarchy: str) -> str:
    """This process's cgroup path in a hierarchy ("0::" for v2, ":memory:" for v1's memory
    controller); "" at the root or where unknown."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith(hierarchy) or (hierarchy in line and hierarchy.startswith(":")):
                path = line.split(":", 2)[2].strip()
                return "" if path == "/" else path
    except OSError:
        pass
    return ""


def default_limit_bytes(share: float = DEFAULT_LIMIT_SHARE) -> int | None:
    """`share` of `machine_memory_bytes()`, or None (no limit) where it is not known."""
    total = machine_memory_bytes()
    return None if total is None else int(total * share)
