"""TensorFlow's start-up lines on stderr: filtered at import, everything else kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loader.servables.quiet_tf import native_stderr_filtered
from tests.daemon_process import ROOT


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
    )


_ONEDNN = (
    "from loader.servables.quiet_tf import import_tensorflow\n"
    "import_tensorflow()\n"
    "from tensorflow.python.util import _pywrap_util_port\n"
    "print(_pywrap_util_port.IsMklEnabled())\n"
)


def test_thread_pools_are_sized_as_configured(tfserving_testdata):
    # tf_Compute threads are TensorFlow's inter-op pool; the intra-op pool's threads
    # carry the process's name. A session built after set_thread_pools uses both sizes.
    model = tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123"
    code = (
        "import os\n"
        "from collections import Counter\n"
        "import numpy as np\n"
        "from loader.servables.quiet_tf import import_tensorflow, set_thread_pools\n"
        "set_thread_pools({intra}, {inter})\n"
        "import_tensorflow()\n"
        "from loader.servables.savedmodel import load_saved_model\n"
        f"servable = load_saved_model({str(model)!r})\n"
        "servable.run('serving_default', {{'x': np.ones((2, 1), np.float32)}})\n"
        "names = Counter(open(f'/proc/self/task/{{t}}/comm').read().strip()\n"
        "                for t in os.listdir('/proc/self/task'))\n"
        "print(names['tf_Compute'], os.environ.get('TF_NUM_INTRAOP_THREADS'))\n"
    )
    for intra, inter in ((1, 3), (2, 5)):
        run = _python(code.format(intra=intra, inter=inter))
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [str(inter), str(intra)]


def test_a_negative_inter_op_size_runs_a_session_on_the_calling_thread(tfserving_testdata):
    # TensorFlow still starts its inter-op pool (one tf_Compute thread) but never wakes it:
    # each run executes its ops on the caller. With a pool of one, runs wake it.
    model = tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123"
    code = (
        "import os\n"
        "import numpy as np\n"
        "from loader.servables.quiet_tf import import_tensorflow, set_thread_pools\n"
        "set_thread_pools(1, {inter})\n"
        "import_tensorflow()\n"
        "from loader.servables.savedmodel import load_saved_model\n"
        f"servable = load_saved_model({str(model)!r})\n"
        "def pool_wakeups():\n"
        "    tasks = [t for t in os.listdir('/proc/self/task')\n"
        "             if open(f'/proc/self/task/{{t}}/comm').read().strip() == 'tf_Compute']\n"
        "    return sum(int(open(f'/proc/self/task/{{t}}/schedstat').read().split()[2])\n"
        "               for t in tasks)\n"
        "before = pool_wakeups()\n"
        "for _ in range(500):\n"
        "    servable.run('serving_default', {{'x': np.ones((2, 1), np.float32)}})\n"
        "print(pool_wakeups() - before)\n"
    )
    inline = _python(code.format(inter=-1))
    assert inline.returncode == 0, inline.stderr
    pooled = _python(code.format(inter=1))
    assert pooled.returncode == 0, pooled.stderr
    assert int(inline.stdout) < 50, inline.stdout
    assert int(pooled.stdout) >= 250, pooled.stdout  # about one wake-up a run


def test_startup_objects_are_frozen_and_later_ones_still_collected():
    # A full collection would otherwise walk every object TensorFlow's import created.
    run = _python(
        "import gc\n"
        "from loader.servables.quiet_tf import import_tensorflow, freeze_startup_objects\n"
        "import_tensorflow()\n"
        "frozen = freeze_startup_objects()\n"
        "tracked = len(gc.get_objects())\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "del a, b\n"
        "print(frozen, tracked, gc.collect())\n"
    )
    assert run.returncode == 0, run.stderr
    frozen, tracked, collected = map(int, run.stdout.split())
    assert frozen > 100_000 and tracked < 10_000, run.stdout
    assert collected >= 2, run.stdout  # a new cycle is still found and freed


def test_tensorflow_starts_with_onednn_off_unless_the_environment_asks_for_it():
    # oneDNN's pooling allocator would keep two copies of a model after one swap.
    default = _python(_ONEDNN)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == "False"
    chosen = _python(_ONEDNN, TF_ENABLE_ONEDNN_OPTS="1")
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip() == "True"


def test_a_plain_tensorflow_import_prints_the_noise_this_filters():
    # The reference: without the filter, the start-up lines do reach stderr.
    plain = _python("import tensorflow as tf; tf.config.list_physical_devices()")
    assert plain.returncode == 0, plain.stderr
    assert "absl::InitializeLog()" in plain.stderr


def test_import_tensorflow_leaves_stderr_clean_and_tensorflow_usable():
    quiet = _python(
        "from loader.servables.quiet_tf import import_tensorflow\n"
        "import_tensorflow()\n"
        "import tensorflow as tf\n"
        "print(float(tf.constant(2.0) + 1))\n"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "3.0"
    assert quiet.stderr == ""


def test_other_lines_written_to_the_descriptor_are_kept_in_order(capfd):
    with native_stderr_filtered():
        os.write(2, b"first line\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"second line\n")
    assert capfd.readouterr().err == "first line\nsecond line\n"


def test_nothing_is_dropped_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError), native_stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        raise RuntimeError("the import failed")
    assert "absl::InitializeLog()" in capfd.readouterr().err  # a known line, kept: it failed


def test_numpy_blas_stays_on_the_calling_thread():
    # The server's BLAS calls (np.vdot on request values) are one request's work: with
    # OpenBLAS's pool, its worker took a core, spinning after each call, while a big body
    # decoded (issue 21, attack 5). Counted here as CPU time of threads besides the main one.
    code = (
        "import os\n"
        "from loader.servables.quiet_tf import set_thread_pools\n"
        "set_thread_pools(0, 0)\n"
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "def others():\n"
        "    ticks = 0\n"
        "    for t in os.listdir('/proc/self/task'):\n"
        "        if int(t) != os.getpid():\n"
        "            fields = open(f'/proc/self/task/{t}/stat').read().rsplit(')', 1)[1].split()\n"
        "            ticks += int(fields[11]) + int(fields[12])\n"
        "    return ticks\n"
        "values = np.random.default_rng(0).random(1_000_000)\n"
        "before = others()\n"
        "for _ in range(300):\n"
        "    np.vdot(values, values)\n"
        "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(blas, others() - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    blas, ticks = run.stdout.rsplit(" ", 1)
    assert blas == "[1]"
    assert int(ticks) <= 2  # clock ticks (10 ms): nothing but stray wake-ups
