"""Reads a SavedModel's proto without loading the model: its tag sets, MetaGraphDefs and
signatures, and whether TF2 wrote it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, message, text_format

# TensorFlow's protos import TensorFlow, which reads its log level at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from loader.base import DataLoss, NotFound, SignatureInfo, TensorInfo


def read_meta_graph(
    path: str | Path, tags: Sequence[str] = ("serve",)
) -> meta_graph_pb2.MetaGraphDef:
    """Reads the MetaGraphDef whose tag set equals `tags` from a SavedModel folder.

    Raises `NotFound` when the folder has no saved_model.pb(txt) or no matching tag set,
    and a DATA_LOSS `ServingError` when the file cannot be parsed.
    """
    return select_meta_graph(read_saved_model(Path(path)), tags, path)


def read_signatures(path: str | Path, tags: Sequence[str] = ("serve",)) -> dict[str, SignatureInfo]:
    """The signatures of a SavedModel, read from its proto without loading the model."""
    return signature_infos(read_meta_graph(path, tags))


def read_tag_sets(path: str | Path) -> list[tuple[str, ...]]:
    """The tag set of every MetaGraphDef in a SavedModel, in file order."""
    return [tuple(mg.meta_info_def.tags) for mg in read_saved_model(Path(path)).meta_graphs]


def signature_def_json(path: str | Path, tags: Sequence[str] = ("serve",)) -> dict[str, Any]:
    """A SavedModel's signatures as TF Serving's metadata API shows them, without loading it."""
    return signature_def_map_json(read_meta_graph(path, tags))


def is_tf2_saved_model(path: str | Path) -> bool:
    """True when TF2 wrote the SavedModel: exactly one MetaGraphDef, with an object graph.

    This is TensorFlow's own test (`saved_model::GetWriteVersion` returning "2").
    """
    return written_by_tf2(read_saved_model(Path(path)))


def written_by_tf2(saved_model: saved_model_pb2.SavedModel) -> bool:
    """`is_tf2_saved_model` for a SavedModel proto already read."""
    graphs = saved_model.meta_graphs
    return len(graphs) == 1 and graphs[0].HasField("object_graph_def")


def select_meta_graph(
    saved_model: saved_model_pb2.SavedModel, tags: Sequence[str], path: str | Path
) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef of `saved_model` whose tag set equals `tags`, else `NotFound`
    naming `path` and the tag sets there are."""
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = [sorted(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
    raise NotFound(
        f"SavedModel at {path} has no MetaGraphDef with tags {sorted(wanted)}; "
        f"available tag sets: {available}"
    )


def read_saved_model(folder: Path) -> saved_model_pb2.SavedModel:
    """The SavedModel proto in `folder` (saved_model.pb, else saved_model.pbtxt); `NotFound`
    when there is neither, `DataLoss` when it cannot be parsed."""
    saved_model = saved_model_pb2.SavedModel()
    binary, text = folder / "saved_model.pb", folder / "saved_model.pbtxt"
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format.Parse(text.read_text(encoding="utf-8"), saved_model)
        else:
            raise NotFound(f"no saved_model.pb or saved_model.pbtxt in {folder}")
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise DataLoss(f"cannot parse the SavedModel in {folder}: {exc}") from exc
    return saved_model


def signature_infos(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, SignatureInfo]:
    """Signature name -> its method, inputs and outputs, as the SignatureDefs say."""
    return {
        name: SignatureInfo(
            method_name=sig.method_name,
            inputs={alias: _tensor_info(t) for alias, t in sig.inputs.items()},
            outputs={alias: _tensor_info(t) for alias, t in sig.outputs.items()},
        )
        for name, sig in meta_graph.signature_def.items()
    }


def _tensor_info(info: meta_graph_pb2.TensorInfo) -> TensorInfo:
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
    return TensorInfo(name=info.name, dtype=types_pb2.DataType.Name(info.dtype), shape=dims)


def signature_def_map_json(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, Any]:
    """The signatures of `meta_graph` as TF Serving's metadata API shows them."""
    # TF Serving copies the MetaGraphDef's map into a SignatureDefMap and prints it with
    # proto field names and default values; int64 sizes come out as strings either way.
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in meta_graph.signature_def.items():
        signature_map.signature_def[name].CopyFrom(sig)
    printed: dict[str, Any] = json_format.MessageToDict(
        signature_map,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return printed

