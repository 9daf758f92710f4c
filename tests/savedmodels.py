"""Tiny real SavedModels for tests: y = 0.5 * x + intercept, one per intercept, built once
per test session and copied into place with the atomic-publish pattern."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


class ModelBuilder:
    """Publishes versions of a linear model whose intercept tells versions apart."""

    def __init__(self, cache: Path) -> None:
        self._cache = cache

    def built(self, intercept: float) -> Path:
        """A SavedModel folder for `intercept`, written on first use."""
        folder = self._cache / f"intercept-{intercept:g}"
        if not folder.is_dir():
            from loader.app.demo import write_linear_model

            write_linear_model(folder, slope=0.5, intercept=intercept)
        return folder

    def publish(self, base: Path, version: int, intercept: float | None = None) -> Path:
        """Copy a model beside `base/version`, then rename it into place."""
        base.mkdir(parents=True, exist_ok=True)
        target = base / str(version)
        tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.built(version if intercept is None else intercept), tmp)
        os.rename(tmp, target)
        return target


def publish_linked(model: Path, base: Path, version: int = 1) -> Path:
    """Publish `model` as `base/version` by hard links (no copy of a large model's bytes),
    renamed into place."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model, staging, copy_function=os.link)
    os.rename(staging, base / str(version))
    return base / str(version)


def write_slow_model(path: Path) -> None:
    """A SavedModel whose `serving_default` spins `n` loop iterations before answering
    y = x, so a test can keep a request in flight for as long as it needs."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None, 1], tf.float32, name="x"),
            tf.TensorSpec([], tf.int64, name="n"),
        ])
        def __call__(self, x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
            _, total = tf.while_loop(
                lambda i, t: i < n, lambda i, t: (i + 1, t + 1.0),
                [tf.constant(0, tf.int64), tf.constant(0.0)],
            )
            return {"y": x + 0.0 * total}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})


def write_gated_model(path: Path) -> None:
    """A SavedModel whose `serving_default` counts its run, then reads the file each row
    names in `gate`, and answers y = x and `runs`, the times the model has been run (this
    run included): whether a request ever reached the model.

    A gate that is a FIFO holds the run, with no CPU spent, until the test opens it for
    writing (`open_gate`); the run then fails (TensorFlow reads with pread, which a FIFO
    refuses), so it suits a request whose answer nobody waits for. Every input and output
    has a batch dimension, so requests batch.
    """
    import tensorflow as tf

    class Gated(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.runs = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[
            tf.TensorSpec([None, 1], tf.float32, name="x"),
            tf.TensorSpec([None], tf.string, name="gate"),
        ])
        def __call__(self, x: tf.Tensor, gate: tf.Tensor) -> dict[str, tf.Tensor]:
            runs = self.runs.assign_add(1)
            with tf.control_dependencies([runs]):  # counted even when the read fails
                read = tf.map_fn(tf.io.read_file, gate, fn_output_signature=tf.string)
            zero = 0.0 * tf.cast(tf.strings.length(read), tf.float32)[:, None]
            return {"y": x + zero, "runs": tf.fill(tf.shape(gate), runs)}

    module = Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})


def open_gate(fifo: Path) -> None:
    """Let a gated model's run that waits on `fifo` go on (see `write_gated_model`)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no run waits on it
    os.close(fd)


def tflite_half_plus(intercept: float, kind: str = "signatures") -> bytes:
    """A TFLite model of y = 0.5 * x + intercept, converted by TensorFlow's own converter.

    `kind` picks how its signatures are told, one per case TF Serving serves:
    - "signatures": the TF2 converter on a tf.function, so the model carries its own
      `serving_default` signature (x -> y, [-1, 1]), run through a signature runner;
    - "plain": the TF1 converter on a session, tensors named "x" and "y" ([1, 1]) and no
      signature, like TF Serving's `saved_model_half_plus_two_tflite`;
    - "tfs_sigdef": the same with the input tensor named "tflite_input" and TF Serving's
      `signature_defs_metadata` mapping x -> "tflite_input:0" and y -> "y:0", like its
      `saved_model_half_plus_two_tflite_with_sigdef`.
    """
    import tensorflow as tf

    if kind == "signatures":
        class HalfPlus(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
            def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
                return {"y": 0.5 * x + intercept}

        module = HalfPlus()
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [module.serve.get_concrete_function()], module
        )
        return bytes(converter.convert())
    input_name = {"plain": "x", "tfs_sigdef": "tflite_input"}[kind]
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [1, 1], name=input_name)
        y = tf.identity(0.5 * x + intercept, name="y")
        model = tf.compat.v1.lite.TFLiteConverter.from_session(session, [x], [y]).convert()
    if kind == "plain":
        return bytes(model)
    return with_tfs_signature_defs(model, {"serving_default": {"x": input_name + ":0"}})


def with_tfs_signature_defs(model: bytes, signatures: dict[str, dict[str, str]]) -> bytes:
    """`model` with TF Serving's `signature_defs_metadata`: signature -> {input alias: tensor
    name}, each signature with output y -> "y:0" (tflite::SetSignatureDefMap's format: a
    FlexBuffer map of name -> serialized SignatureDef)."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    builder = flexbuffers.Builder()
    with builder.Map():
        for name, inputs in signatures.items():
            sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for alias, tensor in inputs.items():
                sig.inputs[alias].name = tensor
                sig.inputs[alias].dtype = 1  # DT_FLOAT
                sig.inputs[alias].tensor_shape.dim.add(size=1)
                sig.inputs[alias].tensor_shape.dim.add(size=1)
            sig.outputs["y"].name = "y:0"
            sig.outputs["y"].dtype = 1
            sig.outputs["y"].tensor_shape.dim.add(size=1)
            sig.outputs["y"].tensor_shape.dim.add(size=1)
            # Small SignatureDefs serialize to ASCII, which FlexBuffer strings hold as is.
            builder.String(name, sig.SerializeToString().decode("ascii"))
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = list(builder.Finish())
    parsed.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = "signature_defs_metadata"
    entry.buffer = len(parsed.buffers) - 1
    parsed.metadata = [*(parsed.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))


def publish_tflite(base: Path, version: int, model: bytes) -> Path:
    """Write `model` as `base/version/model.tflite`, renamed into place."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "model.tflite").write_bytes(model)
    os.rename(tmp, base / str(version))
    return base / str(version)


def write_sized_model(path: Path, floats: int, intercept: float = 2.0) -> Path:
    """y = 0.5 * x + intercept, carrying a variable of `floats` float32s (4 bytes each) that
    every call reads one element of: a model whose memory a test chooses."""
    import numpy as np
    import tensorflow as tf

    class Sized(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            # Random, so nothing (a filesystem, a checkpoint) can store it smaller.
            self.weights = tf.Variable(np.random.default_rng(0).random(floats, np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + intercept + 0.0 * self.weights[0]}

    module = Sized()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


def write_sharded_model(path: Path, intercept: float, shards: int = 2) -> Path:
    """y = 0.5 * x + intercept, with `shards` variables saved in as many checkpoint shards
    (variables.data-0000i-of-0000N), the way TF writes a large model's checkpoint."""
    import tensorflow as tf

    floats = 1024

    class Sharded(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = [tf.Variable(tf.zeros([floats])) for _ in range(shards)]

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + intercept + sum(part[0] for part in self.parts)}

    module = Sharded()
    # One variable per shard: each shard may hold a little more than one variable's bytes.
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=floats * 4 + 512)
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.__call__},
        options=tf.saved_model.SaveOptions(experimental_sharding_callback=policy),
    )
    written = sorted(p.name for p in (path / "variables").glob("variables.data-*"))
    assert written == [f"variables.data-{i:05d}-of-{shards:05d}" for i in range(shards)], written
    return path


def write_tf1_model_without_variables(path: Path, tags: tuple[str, ...] = ("serve",)) -> Path:
    """y = 2 * x as a TF1 SavedModel with no variables: no SaverDef, no variables folder
    (TF1's builder writes an empty one, which a copy to S3 drops). Its one MetaGraph has
    the tag set `tags`."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.identity(2.0 * x, name="y")
        builder = tf.compat.v1.saved_model.Builder(str(path))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(
            session, list(tags), signature_def_map={"serving_default": signature}
        )
        builder.save()
    return path


def upload_order(model: Path) -> list[str]:
    """A SavedModel's files (relative, with "/") in the order a slow copy that starts with
    the graph writes them: saved_model.pb, the other files, variables.index, the shards."""
    files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())

    def rank(relpath: str) -> int:
        if relpath == "saved_model.pb":
            return 0
        if relpath == "variables/variables.index":
            return 2
        return 3 if relpath.startswith("variables/variables.data-") else 1

    return sorted(files, key=rank)


# One input per TensorFlow dtype the Open Inference Protocol serves, keyed by its v2 name.
V2_IDENTITY_DTYPES = {
    "BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "string",
}


def write_identity_model(path: Path) -> Path:
    """A SavedModel whose `serving_default` takes `in_<v2 datatype>` ([-1, 2]) for every
    datatype of V2_IDENTITY_DTYPES and answers each as `out_<v2 datatype>`, unchanged."""
    import tensorflow as tf

    specs = [
        tf.TensorSpec([None, 2], getattr(tf, dtype), name=f"in_{name}")
        for name, dtype in V2_IDENTITY_DTYPES.items()
    ]
    names = list(V2_IDENTITY_DTYPES)

    class Identity(tf.Module):
        @tf.function(input_signature=specs)
        def __call__(self, *inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {f"out_{name}": tf.identity(x) for name, x in zip(names, inputs, strict=True)}

    module = Identity()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path
