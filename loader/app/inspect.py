"""`modelwatch inspect` and `modelwatch run`: saved_model_cli's `show --all` and `run`,
for a local version folder or a store's one, `s3://`, `gs://` or `az://` (fetched first,
with a progress bar).
"""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loader.base import InvalidArgument, SignatureInfo, TensorInfo, Unavailable, VersionRef
from loader.config.schema import AzureConfig, GcsConfig, S3Config, StorageConfig
from loader.sources.object_store import (
    StoreError,
    listing_fingerprint,
    parse_store_uri,
    store_scheme,
)

# What --input_exprs may call: numpy constructors with literal arguments, never eval().
_NUMPY_CALLS = frozenset(
    {"array", "asarray", "ones", "zeros", "full", "arange", "linspace", "eye", "reshape"}
)


@contextmanager
def local_version(path: str, *, endpoint_url: str | None = None, region: str | None = None) -> Iterator[Path]:
    """A local folder holding the version at `path`; a store's one (s3://, gs://, az://) is
    fetched to a temp dir. `endpoint_url` is the store's endpoint (for Azure, its account
    URL), `region` S3's."""
    scheme = store_scheme(path)
    if scheme is None:
        folder = Path(path)
        if not folder.is_dir():
            raise InvalidArgument(f"{path} is not a folder")
        yield folder
        return
    from loader.app.parts import make_store
    from loader.sources.store_fetch import StoreFetcher

    storage = StorageConfig(
        s3=S3Config(endpoint_url=endpoint_url, region=region),
        gcs=GcsConfig(endpoint_url=endpoint_url),
        azure=AzureConfig(account_url=endpoint_url),
    )
    store = make_store(scheme, storage)
    _, bucket, prefix = parse_store_uri(path)
    try:
        fingerprint = listing_fingerprint(store.list_version_objects(bucket, prefix))
    except StoreError as error:
        raise Unavailable(f"could not list {path}: {error}") from None
    cache = Path(tempfile.mkdtemp(prefix="modelwatch-inspect-"))
    bar = _ProgressBar()
    try:
        fetcher = StoreFetcher(store, cache, progress=bar)
        uri = f"{scheme}://{bucket}/{prefix}"
        fetched = fetcher.fetch("inspect", 0, VersionRef(uri, fingerprint))
        bar.close()
        yield Path(fetched)
    finally:
        bar.close()
        shutil.rmtree(cache, ignore_errors=True)


class _ProgressBar:
    """tqdm on stderr while a fetch downloads."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, what: str, total_bytes: int) -> None:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: the bar lives for one fetch
        self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="fetching",
                         file=sys.stderr, leave=False)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def describe(folder: Path) -> dict[str, Any]:
    """Every tag set of the SavedModel and its signatures, and those of the TFLite model
    (`model.tflite`) when there is one, as TF Serving's metadata shows them."""
    from loader.servables.formats import has_saved_model, has_tflite_model

    described: dict[str, Any] = {"path": str(folder)}
    if has_saved_model(folder) or not has_tflite_model(folder):
        from loader.servables.saved_model_proto import read_tag_sets, signature_def_json

        described["meta_graphs"] = [
            {"tags": list(tags), "signature_def": signature_def_json(folder, tags)["signature_def"]}
            for tags in read_tag_sets(folder)
        ]
    if has_tflite_model(folder):
        with _tflite(folder) as servable:
            described["tflite"] = {"signature_def": servable.signature_def_json()["signature_def"]}
    return described


def show_text(folder: Path) -> str:
    """What `saved_model_cli show --all` prints, for every tag set (and the TFLite model)."""
    from loader.servables.formats import TFLITE_FILE, has_saved_model, has_tflite_model

    lines: list[str] = []
    if has_saved_model(folder) or not has_tflite_model(folder):
        from loader.servables.saved_model_proto import read_signatures, read_tag_sets

        for tags in read_tag_sets(folder):
            lines.append(
                f"MetaGraphDef with tag-set: '{', '.join(tags)}' "
                "contains the following SignatureDefs:"
            )
            lines += _signatures_lines(read_signatures(folder, tags), "SavedModel")
    if has_tflite_model(folder):
        with _tflite(folder) as servable:
            lines.append(f"TFLite model {TFLITE_FILE} contains the following SignatureDefs:")
            lines += _signatures_lines(servable.signatures, "TFLite")
    return "\n".join(lines)


@contextmanager
def _tflite(folder: Path) -> Iterator[Any]:
    from loader.servables.tflite import load_tflite_model

    servable = load_tflite_model(folder, num_interpreters=1)
    try:
        yield servable
    finally:
        servable.unload()


def _signatures_lines(signatures: Mapping[str, SignatureInfo], kind: str) -> list[str]:
    lines: list[str] = []
    for name, signature in sorted(signatures.items()):
        lines += ["", f"signature_def['{name}']:"] + _signature_lines(signature, kind)
    return [*lines, ""]


def _signature_lines(signature: SignatureInfo, kind: str) -> list[str]:
    lines = [f"  The given {kind} SignatureDef contains the following input(s):"]
    lines += _tensor_lines("inputs", signature.inputs)
    lines.append(f"  The given {kind} SignatureDef contains the following output(s):")
    lines += _tensor_lines("outputs", signature.outputs)
    lines.append(f"  Method name is: {signature.method_name}")
    return lines


def _tensor_lines(kind: str, tensors: Mapping[str, TensorInfo]) -> list[str]:
    lines = []
    for alias, info in sorted(tensors.items()):
        shape = "unknown_rank" if info.shape is None else _shape_text(info.shape)
        lines += [
            f"    {kind}['{alias}'] tensor_info:",
            f"        dtype: {info.dtype}",
            f"        shape: {shape}",
            f"        name: {info.name}",
        ]
    return lines


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def parse_inputs(input_exprs: str | None, inputs: str | None) -> dict[str, np.ndarray]:
    """saved_model_cli's `--input_exprs 'x=[[1.0]];y=np.ones((2,1))'` and
    `--inputs 'x=a.npy;y=b.npz[key]'`, as arrays by input name."""
    values: dict[str, np.ndarray] = {}
    for name, text in _pairs(input_exprs, "--input_exprs"):
        values[name] = np.asarray(_literal(ast.parse(text, mode="eval").body, text))
    for name, text in _pairs(inputs, "--inputs"):
        values[name] = _load_array(text)
    return values


def _pairs(spec: str | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in (spec or "").split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InvalidArgument(f"{flag} items look like name=value; got {item!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _literal(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str, bytes)):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item, text) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Attribute) and _is_numpy(node.value) and hasattr(np, node.attr):
        dtype = getattr(np, node.attr)
        if isinstance(dtype, type) and issubclass(dtype, np.generic):
            return dtype
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and _is_numpy(node.func.value)
        and node.func.attr in _NUMPY_CALLS
    ):
        args = [_literal(a, text) for a in node.args]
        kwargs = {k.arg: _literal(k.value, text) for k in node.keywords if k.arg}
        return getattr(np, node.func.attr)(*args, **kwargs)
    raise InvalidArgument(
        f"cannot evaluate {text!r}: use literals and np.{'/'.join(sorted(_NUMPY_CALLS))}"
    )


def _is_numpy(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("np", "numpy")


def _load_array(text: str) -> np.ndarray:
    path, _, key = text.partition("[")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidArgument(f"cannot read {path}: {error}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    names = list(loaded.files)
    chosen = key.rstrip("]") if key else (names[0] if names else "")
    if chosen not in names:
        raise InvalidArgument(f"{path} has no array {chosen!r}; it has {', '.join(names)}")
    return np.asarray(loaded[chosen])


def run(
    folder: Path,
    signature_name: str,
    inputs: Mapping[str, np.ndarray],
    tags: Sequence[str],
    *,
    prefer_tflite_model: bool = False,
) -> dict[str, np.ndarray]:
    """Load the version's model, run one signature once (inputs converted to its dtypes),
    unload. The model is the one the server would load, except that a folder holding only
    `model.tflite` runs it without being asked."""
    from loader.servables.formats import has_saved_model, load_version

    servable = load_version(
        folder, prefer_tflite_model=prefer_tflite_model or not has_saved_model(folder),
        num_tflite_interpreters=1, tags=tags,
    )
    try:
        return servable.run(signature_name, inputs)
    finally:
        servable.unload()
