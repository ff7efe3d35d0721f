"""CSR by output row, the storage the ``ai.onnxprune`` ops consume (pure numpy).

A weight matrix ``W`` of shape (N, K) — row ``r`` holds the weights feeding output
feature/channel ``r`` — is stored as three arrays:

    values  float32[nnz]        the nonzero weights, row by row, columns ascending
    col_idx int16|int32[nnz]    their column (input) indices
    row_ptr int32[N + 1]        row r is values[row_ptr[r]:row_ptr[r+1]]; row_ptr[0] = 0, row_ptr[N] = nnz

Invariants: ``row_ptr`` is non-decreasing, ``0 <= col_idx < K``. int16 indices are chosen
whenever the row width allows (K <= 32768, so every index fits in 0..32767): they cut the
bytes streamed per nonzero from 8 to 6.
"""

from __future__ import annotations

import numpy as np

INT16_MAX_COLUMNS = int(np.iinfo(np.int16).max) + 1


def index_dtype_for(num_columns: int) -> np.dtype:
    """The narrowest column-index type for rows of ``num_columns`` entries."""
    return np.dtype(np.int16) if num_columns <= INT16_MAX_COLUMNS else np.dtype(np.int32)


def csr_from_dense(
    w_rows_by_output: np.ndarray, index_dtype: "np.dtype | type | str | None" = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, col_idx, row_ptr) of a 2-D matrix whose rows are output features.

    Exactly the nonzero entries are kept (pruned weights are exact zeros). ``index_dtype``
    defaults to int16 when the row width allows it, else int32; asking for int16 on a wider
    matrix raises ValueError.
    """
    w = np.asarray(w_rows_by_output)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (outputs, inputs) matrix, got shape {w.shape}")
    rows, cols = w.shape
    idx_t = index_dtype_for(cols) if index_dtype is None else np.dtype(index_dtype)
    if idx_t not in (np.dtype(np.int16), np.dtype(np.int32)):
        raise ValueError(f"index_dtype must be int16 or int32, got {idx_t}")
    if idx_t == np.int16 and cols > INT16_MAX_COLUMNS:
        raise ValueError(f"rows of {cols} columns need int32 column indices")
    mask = w != 0
    nnz = int(mask.sum())
    if nnz > np.iinfo(np.int32).max:
        raise ValueError("more than 2**31 - 1 nonzeros do not fit int32 row pointers")
    r_idx, c_idx = np.nonzero(mask)  # row-major order: rows ascending, columns ascending
    values = np.ascontiguousarray(w[r_idx, c_idx], dtype=np.float32)
    row_ptr = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=row_ptr[1:])
    return values, c_idx.astype(idx_t), row_ptr


def dense_from_csr(values: np.ndarray, col_idx: np.ndarray, row_ptr: np.ndarray, num_columns: int) -> np.ndarray:
    """Inverse of :func:`csr_from_dense` (float32 (N, K) matrix)."""
    rows = len(row_ptr) - 1
    w = np.zeros((rows, num_columns), dtype=np.float32)
    counts = np.diff(np.asarray(row_ptr, dtype=np.int64))
    w[np.repeat(np.arange(rows), counts), np.asarray(col_idx, dtype=np.int64)] = values
    return w
