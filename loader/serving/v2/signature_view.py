"""A signature as the Open Inference Protocol checks and answers against it: each input's
v2 datatype and the dimensions its shape fixes, each output's v2 datatype. Made once per
loaded signature and kept (`view_of`), so a request pays a dict lookup where it paid a
datatype translation and a walk over the shape per input and output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from loader.base import SignatureInfo, TensorInfo
from loader.serving.v2 import datatypes


@dataclass(frozen=True, slots=True)
class InputView:
    """One input: its v2 datatype, and its shape (None: any rank) as the signature says."""

    datatype: str
    shape: tuple[int, ...] | None
    # The shape's known dimensions, read from a request's shape by `_known` in one C call
    # and compared with `_values` (a tuple, or one int when a single dimension is known).
    _known: Callable[[Sequence[int]], Any] | None
    _values: Any

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether a request's `shape` is one this input takes (-1: any size)."""
        expected = self.shape
        if expected is None:
            return True
        if len(shape) != len(expected):
            return False
        return self._known is None or self._known(shape) == self._values


@dataclass(frozen=True, slots=True)
class SignatureView:
    """The signature's inputs and the v2 datatype of each of its outputs."""

    inputs: dict[str, InputView]
    outputs: dict[str, str]


def _input_view(info: TensorInfo) -> InputView:
    shape = info.shape
    known = [] if shape is None else [(i, dim) for i, dim in enumerate(shape) if dim != -1]
    getter = itemgetter(*(i for i, _ in known)) if known else None
    values: Any = tuple(dim for _, dim in known)
    if len(known) == 1:  # itemgetter of one index gives the item, not a tuple
        values = values[0]
    return InputView(datatypes.from_tf(info.dtype), shape, getter, values)


# The views of the signatures met last, by identity: a loaded version's SignatureInfo is
# made once and never changes. Each entry holds its signature, so its id cannot be reused
# while it is here (as json_predict's input specs).
_VIEWS: dict[int, tuple[SignatureInfo, SignatureView]] = {}
_MAX_VIEWS = 256


def view_of(signature: SignatureInfo) -> SignatureView:
    """The protocol's view of `signature` (cached by signature)."""
    cached = _VIEWS.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    view = SignatureView(
        {name: _input_view(info) for name, info in signature.inputs.items()},
        {name: datatypes.from_tf(info.dtype) for name, info in signature.outputs.items()},
    )
    if len(_VIEWS) >= _MAX_VIEWS:  # versions come and go: forget the old ones now and then
        _VIEWS.clear()
    _VIEWS[id(signature)] = (signature, view)
    return view
