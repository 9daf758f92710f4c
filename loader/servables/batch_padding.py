"""Padding a batch as TF Serving's batching_util does: up to the next allowed batch size,
and (with `pad_variable_length_inputs`) each tensor up to the largest dims in its batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np


def shape_key_padded(array: np.ndarray) -> tuple[Any, ...]:
    """With `pad_variable_length_inputs`, tensors of one dtype and rank batch together.
    An empty tensor has no first element to pad with (TF Serving refuses it)."""
    return (array.dtype.str, array.ndim) if array.size else (array.dtype.str, array.shape[1:])


def allowed_size(allowed: Sequence[int], rows: int) -> int:
    """TF Serving's RoundToLowestAllowedBatchSize: the smallest allowed size >= rows."""
    i = bisect.bisect_left(allowed, rows)
    return allowed[i] if i < len(allowed) else rows


def pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pads each tensor's non-batch dims up to the largest in `parts` with its own first
    element, as TF Serving's AddPadding does."""
    dims = tuple(max(d) for d in zip(*(p.shape[1:] for p in parts)))
    padded = []
    for part in parts:
        if part.shape[1:] == dims:
            padded.append(part)
            continue
        out = np.full((part.shape[0], *dims), part.flat[0], dtype=part.dtype)
        out[tuple(slice(0, n) for n in part.shape)] = part
        padded.append(out)
    return padded
