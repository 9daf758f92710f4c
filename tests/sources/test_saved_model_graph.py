"""Whether a graph restores variables, read from real SavedModels' bytes without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.sources.local import graph_reader
from loader.sources.saved_model_graph import RangeReader, graph_restores_variables
from tests.savedmodels import write_tf1_model_without_variables


@pytest.fixture(scope="module")
def tf1_without_variables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tf1_model_without_variables(tmp_path_factory.mktemp("tf1") / "model")


class Reads:
    """A reader of `data` that counts what is asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0
        self.bytes = 0

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls += 1
        chunk = self.data[offset : offset + length]
        self.bytes += len(chunk)
        return chunk


def restores(data: bytes, reader: RangeReader | None = None) -> bool | None:
    return graph_restores_variables("saved_model.pb", len(data), reader or Reads(data))


def test_a_tf2_graph_restores_variables(model_builder) -> None:
    assert graph_reader(str(model_builder.built(1)))("saved_model.pb") is True


def test_a_tf1_graph_without_variables_restores_none(tf1_without_variables: Path) -> None:
    assert graph_reader(str(tf1_without_variables))("saved_model.pb") is False


def test_a_large_graph_is_skipped_by_its_length_not_read(model_builder) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((model_builder.built(1) / "saved_model.pb").read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    # A frozen-graph-sized constant in front of the SaverDef.
    node = meta_graph.graph_def.node.add(name="big", op="Const")
    node.attr["value"].tensor.tensor_content = bytes(8 * 1024 * 1024)
    data = saved_model.SerializeToString()
    reads = Reads(data)
    assert restores(data, reads) is True
    assert reads.bytes < 512 * 1024, reads.bytes
    assert reads.calls <= 4


@pytest.mark.parametrize(
    "cut", [1, 2, 100, "half", -1], ids=["1 byte", "2 bytes", "100 bytes", "half", "all but 1"]
)
def test_a_graph_cut_short_cannot_tell(model_builder, cut: int | str) -> None:
    data = (model_builder.built(1) / "saved_model.pb").read_bytes()
    end = len(data) // 2 if cut == "half" else int(cut)
    assert restores(data[:end]) is None


@pytest.mark.parametrize("data", [b"", b"graph", b"\xff" * 20, bytes(100)])
def test_what_is_not_a_saved_model_cannot_tell(data: bytes) -> None:
    assert restores(data) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("meta_graphs {\n  saver_def {\n    filename_tensor_name: \"a\"\n  }\n}\n", True),
        ("meta_graphs {\n  saver_def: <\n  >\n}\n", True),
        ("meta_graphs {\n  meta_info_def {\n    tags: \"serve\"\n  }\n}\n", False),
    ],
)
def test_a_text_graph_restores_variables_when_it_has_a_saver_def(text: str, expected: bool) -> None:
    data = text.encode()
    assert graph_restores_variables("saved_model.pbtxt", len(data), Reads(data)) is expected
