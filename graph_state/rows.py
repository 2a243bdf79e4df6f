"""Rows of many per-graph arrays at once: what the incremental engine reads from and writes to
the users' layer caches (``UserGraph.cache``, ``[layers, nodes, d]`` float32 each) per batch.

In C when the native core is built (one call instead of a numpy fancy index per graph, ~2 µs
each: ~180 graphs a micro-batch on ml-100k); the numpy code below otherwise, the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graph_state.user_graph import _native


def take_rows(arrays: Sequence[np.ndarray], lo: int, hi: int, at: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """``[hi - lo, len(slots), d]``: layers ``lo:hi`` of rows ``slots[at[g]:at[g + 1]]`` of each ``arrays[g]``,
    graph after graph (``at``: int64 offsets into ``slots``, ``len(arrays) + 1`` of them).

    >>> a = [np.arange(12, dtype=np.float32).reshape(2, 3, 2), np.zeros((2, 1, 2), dtype=np.float32)]
    >>> take_rows(a, 1, 2, np.array([0, 2, 3]), np.array([2, 0, 0])).tolist()
    [[[10.0, 11.0], [6.0, 7.0], [0.0, 0.0]]]
    """
    if _native is not None and type(arrays) is list and arrays:
        rows = _native.take_rows(arrays, lo, hi, _int64(at), _int64(slots))
        return np.frombuffer(rows, dtype=np.float32).reshape(hi - lo, len(slots), arrays[0].shape[2])
    return py_take_rows(arrays, lo, hi, at, slots)


def put_rows(
    arrays: Sequence[np.ndarray], lo: int, hi: int, at: np.ndarray, slots: np.ndarray, values: np.ndarray
) -> None:
    """The inverse of :func:`take_rows`: ``values[:, at[g]:at[g + 1]]`` into those rows of ``arrays[g]``."""
    if _native is not None and type(arrays) is list and arrays:
        _native.put_rows(arrays, lo, hi, _int64(at), _int64(slots), np.ascontiguousarray(values, dtype=np.float32))
        return
    py_put_rows(arrays, lo, hi, at, slots, values)


def py_take_rows(arrays: Sequence[np.ndarray], lo: int, hi: int, at: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """:func:`take_rows` in numpy (the reference)."""
    if not len(arrays):
        return np.zeros((hi - lo, 0, 0), dtype=np.float32)
    return np.concatenate([a[lo:hi, slots[at[g] : at[g + 1]]] for g, a in enumerate(arrays)], axis=1)


def py_put_rows(
    arrays: Sequence[np.ndarray], lo: int, hi: int, at: np.ndarray, slots: np.ndarray, values: np.ndarray
) -> None:
    """:func:`put_rows` in numpy (the reference)."""
    for g, a in enumerate(arrays):
        a[lo:hi, slots[at[g] : at[g + 1]]] = values[:, at[g] : at[g + 1]]


def _int64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)
