"""The process that holds the models: made ready before the first load, handed memory
back after each unload, and kept from freezing on a blocked read.

Nothing here imports TensorFlow; `savedmodel` calls it around its loads and unloads, and the
daemon calls `prepare_runtime` once at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from pathlib import Path
from typing import Any


def return_freed_memory() -> None:
    """Hand the heap memory an unload freed back to the OS.

    glibc keeps freed heap memory for reuse; with large blocks on mmap (prepare_runtime)
    this releases what the smaller ones leave. Elsewhere than glibc it does nothing.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_LIBC = _load_libc()
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
# How long a thread may keep the GIL from one that asks for it: Python's own interval, and
# the one while large requests decode (see `hand_over_sooner`).
SWITCH_INTERVAL_SECONDS = sys.getswitchinterval()
BUSY_SWITCH_INTERVAL_SECONDS = 0.001


def hand_over_sooner(busy: bool) -> None:
    """While large requests decode and encode (`busy`), let a thread keep the GIL at most
    1 ms from another that asks for it; otherwise Python's 5 ms.

    A thread decoding a large body keeps the GIL until an event loop has waited a whole
    interval for it, and a loop waits again at each of its callbacks (every read, accept
    and answer). At 5 ms a steady client beside a 60 MB JSON body (issue 21, attack 5)
    fell behind to a p50 of 2.7 s; at 1 ms it kept 19 ms. Not always at 1 ms: the loop
    then hands over to the batch threads sooner too, batches form ~10% smaller and a
    request costs ~5-10% more CPU at 32 clients (bench/rest_cpu.py, four pairs).
    Called by the decode budget when its first bytes are taken and when its last are
    given back.
    """
    sys.setswitchinterval(BUSY_SWITCH_INTERVAL_SECONDS if busy else SWITCH_INTERVAL_SECONDS)


def prepare_runtime() -> None:
    """Get TensorFlow ready, and keep unloads from pausing every request thread.

    Unloading a TF1-era graph needs a full garbage collection (its objects form reference
    cycles). With the ~270,000 objects TensorFlow's import leaves alive, that collection
    holds the GIL for about 0.2 s, stalling every request during a swap. Freezing what is
    alive now (gc.freeze) takes it out of later collections: an unload then collects in
    about 1 ms. Call this before any model is loaded, or that model could never be freed.
    """
    gc.collect()
    gc.freeze()
    if _LIBC is not None:
        # Large blocks (a model's weights) straight from mmap, so an unload gives them
        # back to the OS at once instead of leaving holes glibc keeps: measured +1.5% RSS
        # over 60 swaps of a 48 MiB model, against +30% with glibc's default.
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)


def read_through(folder: str | Path, chunk_bytes: int = 1 << 20) -> None:
    """Read every file of a version once, in Python, before TensorFlow opens any of them.

    TensorFlow's C++ reads hold the GIL: a read that blocks (a dead network mount, a named
    pipe) would freeze every thread of the server, load timeouts and SIGTERM included.
    Python's reads release the GIL, so a blocked read here is one the load timeout can end.
    The files then sit in the page cache, where TensorFlow finds them at once.
    """
    buffer = bytearray(chunk_bytes)
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as source:
                while source.readinto(buffer):
                    pass
