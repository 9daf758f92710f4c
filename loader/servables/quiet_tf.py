"""Import TensorFlow without the lines its C++ core prints before logging is set up.

`TF_CPP_MIN_LOG_LEVEL` silences TensorFlow's logging once absl's is initialised, but not
what it writes before that, straight to file descriptor 2, on every start: "All log
messages before absl::InitializeLog() is called are written to STDERR", oneDNN and CUDA
probing, and on a machine without a GPU "E0000 ... failed call to cuInit". An operator
reading that at each start of a CPU-only server cannot tell it from a real error.

`import_tensorflow()` imports TensorFlow and probes its devices (where the cuInit line
comes from) with descriptor 2 sent to a temporary file; afterwards the known lines go to
the debug log and every other line to stderr, in order. Nothing is lost: if the import
fails, its output is shown whole.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("modelwatch.tensorflow")

# What TensorFlow's CPU wheels print at import and device probing on a machine like ours.
_NOISE = re.compile(
    "|".join([
        r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        r"oneDNN custom operations are on",
        r"Could not find cuda drivers on your machine",
        r"failed call to cuInit",
        r"This TensorFlow binary is optimized to use available CPU instructions",
        r"To enable the following instructions: .* rebuild TensorFlow",
        r"Unable to register cu(DNN|FFT|BLAS) factory",
        r"computation placer already registered",
        r"TF-TRT Warning: Could not find TensorRT",
    ])
)


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture descriptor 2 for the block; then drop TensorFlow's start-up noise from it
    (to the debug log) and write the rest to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not failed and _NOISE.search(line):
                    log.debug("%s", line)
                else:
                    print(line, file=sys.stderr)


def prefer_plain_allocator() -> None:
    """Start TensorFlow with oneDNN off unless the environment says otherwise.

    TensorFlow's x86 wheels turn oneDNN on, and with it an allocator that pools large
    blocks and never gives them back: after one availability-preserving swap (both
    versions in memory for a moment) the process keeps two copies of the model for good
    (bench/memory.py: +50 MiB for a 48 MiB model, against +0.1% with oneDNN off).
    TF Serving's standard build has no oneDNN either. Setting TF_ENABLE_ONEDNN_OPTS=1
    trades that memory for cheaper model calls (~40% less CPU for an MLP's batch of 32,
    bench/tf_call_cost.py); under `resource_preserving` the pool never holds two copies.
    Read by TensorFlow at import: call it before.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def set_thread_pools(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools (0 leaves a pool to TensorFlow, or to the variable
    already in the environment; a negative inter-op size runs a session's ops on the
    thread that calls it). TensorFlow reads these when it creates its first session or
    context, so call it before any model loads.

    numpy's BLAS (OpenBLAS) is kept to the calling thread. The server calls it only to
    check request values (`np.vdot` in loader/serving/rest/json_tensors.py), where a
    request is the unit of parallelism; with a pool, OpenBLAS's worker spins after each
    call, and while a 60 MB body decoded it took 80% of one of this machine's two cores
    from every other client (issue 21, attack 5).
    """
    for name, threads in (("TF_NUM_INTRAOP_THREADS", intra_op), ("TF_NUM_INTEROP_THREADS", inter_op)):
        if threads != 0:
            os.environ[name] = str(threads)
    import numpy  # noqa: F401  (loads the BLAS library that threadpoolctl finds)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def import_tensorflow() -> None:
    """Import TensorFlow and probe its devices quietly (see the module's docstring).

    Does nothing once TensorFlow is imported: by then its start-up lines are written.
    """
    if "tensorflow" in sys.modules:
        return
    prefer_plain_allocator()
    with native_stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()


def freeze_startup_objects() -> int:
    """Take what is alive now out of the cyclic garbage collector's sight; call it once,
    after TensorFlow and the server are imported and before any model loads.

    Importing TensorFlow leaves ~340,000 objects tracked by the collector, and each full
    collection walks all of them: 100-200 ms holding the interpreter lock, during which
    no request is answered. They live as long as the process, so freezing them costs
    nothing; what is created later (models, requests) is collected as before. Returns how
    many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
