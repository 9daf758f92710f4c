"""Which model of a version folder is served, as TF Serving's SavedModelBundleFactory
chooses: `model.tflite` when TFLite is preferred (`--prefer_tflite_model`) and the file
is there, else the SavedModel. The loaders are imported on first use, so this module
costs nothing to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loader.base import NotFound, Servable

TFLITE_FILE = "model.tflite"  # TF Serving's kTfLiteModelFilename
_GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def has_saved_model(folder: str | Path) -> bool:
    """Whether the folder holds a SavedModel graph."""
    return any((Path(folder) / name).is_file() for name in _GRAPH_FILES)


def has_tflite_model(folder: str | Path) -> bool:
    """Whether the folder holds a TFLite model."""
    return (Path(folder) / TFLITE_FILE).is_file()


def load_version(
    path: str | Path,
    *,
    prefer_tflite_model: bool = False,
    num_tflite_interpreters: int | None = None,
    tags: Sequence[str] = ("serve",),
) -> Servable:
    """Loads the model TF Serving would load from version folder `path`.

    Without `prefer_tflite_model` a folder holding only `model.tflite` fails to load (as in
    TF Serving) with a message saying how to serve it. Raises `ServingError`s naming the
    folder.
    """
    if prefer_tflite_model and has_tflite_model(path):
        from loader.servables.tflite import load_tflite_model

        return load_tflite_model(path, num_interpreters=num_tflite_interpreters)
    if has_tflite_model(path) and not has_saved_model(path):
        raise NotFound(
            f"{path} holds a TFLite model ({TFLITE_FILE}) and no SavedModel; to serve it, "
            "set tensorflow.prefer_tflite_model (TF Serving's --prefer_tflite_model)"
        )
    from loader.servables.savedmodel import load_saved_model

    return load_saved_model(path, tags)
