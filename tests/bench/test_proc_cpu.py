"""CPU accounting over a process tree (bench/proc_cpu.py): parsing, the tree walk, the
window arithmetic when processes exit, and real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bench.proc_cpu import (
    CLOCK_TICKS,
    ProcStat,
    descendants_cpu,
    parse_stat,
    tree,
    window_cpu_s,
)

ROOT = Path(__file__).resolve().parents[2]


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int,
              cstime: int, start: int) -> str:
    # Fields 3.. of /proc/<pid>/stat: state, ppid, pgrp, session, tty, tpgid, flags,
    # minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime, priority, nice,
    # num_threads, itrealvalue, starttime, ...
    rest = ["S", ppid, 1, 1, 0, -1, 4194560, 10, 0, 0, 0, utime, stime, cutime, cstime,
            20, 0, 1, 0, start, 1000, 100]
    return f"{pid} ({comm}) " + " ".join(map(str, rest)) + "\n"


def test_parse_stat_reads_times_after_a_command_name_with_spaces_and_parentheses() -> None:
    stat = parse_stat(stat_line(42, "ray::MLP) (x y", 7, 300, 100, 50, 25, 999))
    assert (stat.pid, stat.ppid, stat.start_ticks) == (42, 7, 999)
    assert stat.own_s == 400 / CLOCK_TICKS
    assert stat.children_s == 75 / CLOCK_TICKS
    assert stat.cpu_s == 475 / CLOCK_TICKS


def test_parse_stat_of_this_process_matches_its_pid() -> None:
    import os

    stat = parse_stat(Path(f"/proc/{os.getpid()}/stat").read_text())
    assert stat.pid == os.getpid() and stat.ppid == os.getppid()


def proc(pid: int, ppid: int, own: float, children: float = 0.0, start: int = 1) -> ProcStat:
    return ProcStat(pid, ppid, start, own, children)


def test_tree_takes_the_descendants_and_leaves_out_excluded_subtrees() -> None:
    stats = {s.pid: s for s in (proc(1, 0, 9), proc(10, 1, 1), proc(11, 10, 2),
                                proc(12, 11, 3), proc(13, 10, 4), proc(14, 13, 5),
                                proc(20, 1, 6))}
    assert {pid for pid, _ in tree(stats, 10)} == {10, 11, 12, 13, 14}
    assert {pid for pid, _ in tree(stats, 10, include_root=False)} == {11, 12, 13, 14}
    assert {pid for pid, _ in tree(stats, 10, exclude=[13])} == {10, 11, 12}


def test_a_child_reaped_inside_the_window_counts_only_its_window_cpu() -> None:
    # Before: the parent has used 1 s, its child 2 s. The child then uses 1 s more, exits
    # (3 s in all) and is reaped: its 3 s move into the parent's cutime, which also used
    # 0.5 s itself. The tree's window: 0.5 + 1 = 1.5 s, not 3 s.
    before = tree({1: proc(1, 0, 0), 10: proc(10, 1, 1.0), 11: proc(11, 10, 2.0)}, 1,
                  include_root=False)
    after = tree({1: proc(1, 0, 0), 10: proc(10, 1, 1.5, children=3.0)}, 1, include_root=False)
    assert window_cpu_s(before, after) == 1.5


def test_a_recycled_pid_is_a_new_process() -> None:
    before = tree({1: proc(1, 0, 0), 10: proc(10, 1, 5.0, start=100)}, 1, include_root=False)
    after = tree({1: proc(1, 0, 0), 10: proc(10, 1, 0.25, start=200)}, 1, include_root=False)
    assert set(before) != set(after)


BURNER = textwrap.dedent("""
    import subprocess, sys, time
    def burn(seconds):
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
    sys.stdin.readline()  # the test's first snapshot is taken
    # A grandchild that burns 0.3 s and is reaped here: its CPU lands in our cutime.
    subprocess.run([sys.executable, "-c",
                    "import time\\nstart = time.process_time()\\n"
                    "while time.process_time() - start < 0.3: pass"], check=True)
    burn(0.2)
    print("done", flush=True)
    sys.stdin.read()
""")


def test_a_real_tree_counts_its_own_and_its_reaped_childrens_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        before = {key: stat for key, stat in descendants_cpu().items() if key[0] == child.pid}
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        after = {key: stat for key, stat in descendants_cpu().items() if key[0] == child.pid}
        assert window_cpu_s(before, after) >= 0.45
        assert sum(s.children_s for s in after.values()) >= 0.29
    finally:
        child.communicate("", timeout=30)


ORPHANS = textwrap.dedent("""
    import os, subprocess, sys, time
    from bench.proc_cpu import become_subreaper, descendants_cpu
    assert become_subreaper()
    # A child that starts a grandchild and exits at once: the grandchild is orphaned.
    child = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
        "'import sys; sys.stdin.read()'], stdin=subprocess.PIPE); print(p.pid)"],
        stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    child.wait()
    pids = {pid for pid, _ in descendants_cpu()}
    print(grandchild in pids)
    os.kill(grandchild, 9)
""")


def test_orphans_stay_in_the_tree_of_a_subreaper() -> None:
    done = subprocess.run([sys.executable, "-c", ORPHANS], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
