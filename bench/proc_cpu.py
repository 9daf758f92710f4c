"""CPU-seconds spent by a server's whole process tree, read from /proc.

A server is often many processes (gunicorn's workers, Ray's GCS, raylet, proxy and replica
workers, Triton's C++ server beside PyTriton's Python process), so its cost is the sum over
the tree: for each process `utime + stime` (its own threads) `+ cutime + cstime` (the
children it has reaped). Sampled before and after a measured window, the difference is the
tree's CPU in that window, and it holds when processes come and go inside it:

- a process that exits and is reaped by its parent in the tree moves its whole CPU into
  the parent's `cutime`/`cstime`, so (after - before) still counts only its window's CPU;
- a process orphaned by its parent is re-parented to the nearest child subreaper: the
  bench declares itself one (`become_subreaper`), so orphans stay in its tree (as zombies
  until it reaps them, which keep their final times in /proc).

Processes are keyed by (pid, start time), so a recycled pid is a new process. Linux only.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the accounting needs (times in seconds)."""

    pid: int
    ppid: int
    start_ticks: int
    own_s: float  # utime + stime
    children_s: float  # cutime + cstime: reaped children

    @property
    def cpu_s(self) -> float:
        return self.own_s + self.children_s


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line. The command name (field 2) is in parentheses and
    may hold spaces and parentheses itself, so fields are counted after its last ')'."""
    pid = int(text[: text.index("(")].strip())
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    start = int(rest[19])
    return ProcStat(pid, ppid, start, (utime + stime) / CLOCK_TICKS,
                    (cutime + cstime) / CLOCK_TICKS)


def read_all(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process's stat now; processes that vanish while being read are skipped."""
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return found


def tree(stats: Mapping[int, ProcStat], root: int, *, include_root: bool = True,
         exclude: Iterable[int] = ()) -> dict[tuple[int, int], ProcStat]:
    """The processes under `root` (and `root` itself when `include_root`), leaving out the
    subtrees rooted at `exclude` (a load generator started by the same parent)."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    skip = set(exclude)
    found: dict[tuple[int, int], ProcStat] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in skip:
            continue
        stat = stats.get(pid)
        if stat is not None and (pid != root or include_root):
            found[(pid, stat.start_ticks)] = stat
        stack.extend(children.get(pid, ()))
    return found


def tree_cpu_s(processes: Mapping[tuple[int, int], ProcStat]) -> float:
    return sum(stat.cpu_s for stat in processes.values())


def window_cpu_s(before: Mapping[tuple[int, int], ProcStat],
                 after: Mapping[tuple[int, int], ProcStat]) -> float:
    """CPU-seconds the tree spent between two snapshots (see the module's docstring)."""
    return tree_cpu_s(after) - tree_cpu_s(before)


def descendants_cpu(root: int | None = None, exclude: Iterable[int] = ()
                    ) -> dict[tuple[int, int], ProcStat]:
    """A snapshot of every process below `root` (default: this process), not counting
    `root` itself: its cutime holds every server and load generator it reaped before."""
    return tree(read_all(), os.getpid() if root is None else root, include_root=False,
                exclude=exclude)


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux >= 3.4), so that a
    server's daemonised helpers stay in its tree; False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
