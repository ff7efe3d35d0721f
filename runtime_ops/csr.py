"""CSR by output row, the storage the ``ai.onnxprune`` ops consume (pure numpy).

A weight matrix ``W`` of shape (N, K) — row ``r`` holds the weights feeding output
feature/channel ``r`` — is stored as three arrays:

    values  float32[nnz]        the nonzero weights, row by row, columns ascending
    col_idx int16|int32[nnz]    their column (input) indices
    row_ptr int32[N + 1]        row r is values[row_ptr[r]:row_ptr[r+1]]; row_ptr[0] = 0, row_ptr[N] = nnz

Invariants: ``row_ptr`` is non-decreasing, ``0 <= col_idx < K``. int16 indices are chosen
whenever the row width allows (K <= 32768, so every index fits in 0..32767): they cut the
bytes streamed per nonzero from 8 to 6.

Op contract v2 adds two encodings, told apart by element type:

* **uint8 column deltas**: entry j of a row holds the gap from the previous entry's column
  (the first from column 0), so a row's columns are the running sums of its deltas. A gap
  over 255 is bridged by filler entries (value 0, delta 255), which ``row_ptr`` counts like any
  entry: lossless, 1 byte per entry instead of 2 or 4, at the price of the fillers.
  :func:`delta8_from_csr` encodes, :func:`compact_csr` picks it per matrix when it is smaller.
* **float16 values** (opt-in): the kernels widen them to float32 in registers and accumulate
  in float32; the values themselves are rounded to float16 once, when the file is written.
"""

from __future__ import annotations

import numpy as np

INT16_MAX_COLUMNS = int(np.iinfo(np.int16).max) + 1
DELTA8_MAX = 255  # largest gap one uint8 delta holds; longer gaps take filler entries
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger magnitudes become inf


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


def delta8_from_csr(values: np.ndarray, col_idx: np.ndarray,
                    row_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same matrix with uint8 column deltas: (values, deltas, row_ptr), fillers included.

    Columns must ascend within each row (as :func:`csr_from_dense` writes them). A gap g from
    the previous column (the row start counts as column 0) takes ``f = max(0, (g - 1) // 255)``
    fillers of (0.0, 255) followed by the entry with delta ``g - 255 f`` in [0, 255].
    """
    rp = np.asarray(row_ptr, dtype=np.int64)
    cols = np.asarray(col_idx, dtype=np.int64)
    counts = np.diff(rp)
    starts = np.repeat(rp[:-1], counts)  # each entry's row start
    gaps = cols.copy()
    not_first = np.arange(len(cols)) != starts
    gaps[not_first] -= cols[np.flatnonzero(not_first) - 1]
    if np.any(gaps < 0):
        raise ValueError("delta encoding needs ascending columns within each row")
    fillers = np.maximum(0, (gaps - 1) // DELTA8_MAX)
    pos = np.arange(len(cols)) + np.cumsum(fillers)  # each entry after its fillers
    total = len(cols) + int(fillers.sum())
    if total > np.iinfo(np.int32).max:
        raise ValueError("more than 2**31 - 1 entries (fillers included) do not fit int32 row pointers")
    out_values = np.zeros(total, dtype=np.asarray(values).dtype)
    out_deltas = np.full(total, DELTA8_MAX, dtype=np.uint8)
    out_values[pos] = values
    out_deltas[pos] = (gaps - DELTA8_MAX * fillers).astype(np.uint8)
    fill_per_row = np.bincount(np.repeat(np.arange(len(counts)), counts), weights=fillers,
                               minlength=len(counts)).astype(np.int64)
    out_rp = (rp + np.concatenate([[0], np.cumsum(fill_per_row)])).astype(np.int32)
    return out_values, out_deltas, out_rp


def columns_of(col_idx: np.ndarray, row_ptr: np.ndarray) -> np.ndarray:
    """Absolute column of every entry (int64): ``col_idx`` itself, or the per-row running sums
    of uint8 deltas."""
    col_idx = np.asarray(col_idx)
    if col_idx.dtype != np.uint8:
        return col_idx.astype(np.int64)
    rp = np.asarray(row_ptr, dtype=np.int64)
    running = np.cumsum(col_idx, dtype=np.int64)
    before_row = np.concatenate([[0], running])[rp[:-1]]  # sum of all earlier rows' deltas
    return running - np.repeat(before_row, np.diff(rp))


def csr_nbytes(*arrays: np.ndarray) -> int:
    """Bytes the CSR arrays take as initializers."""
    return sum(int(np.asarray(a).nbytes) for a in arrays)


def compact_csr(w_rows_by_output: np.ndarray, values_dtype: "np.dtype | type | str" = np.float32,
                deltas: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smallest CSR of ``w_rows_by_output`` (op contract v2): uint8 column deltas when
    they take fewer bytes than int16/int32 columns (the fillers counted), else the v1 indices
    (a tie keeps v1); ``deltas=False`` keeps the v1 indices. ``values_dtype`` float16 rounds
    the values to float16; a value beyond float16's range raises ValueError (it would become
    inf)."""
    v_t = np.dtype(values_dtype)
    if v_t not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"values_dtype must be float32 or float16, got {v_t}")
    values, col_idx, row_ptr = csr_from_dense(w_rows_by_output)
    if v_t == np.float16:
        if values.size and float(np.max(np.abs(values))) > FLOAT16_MAX:
            raise ValueError(f"a weight beyond float16's range (|w| > {FLOAT16_MAX:g})")
        values = values.astype(np.float16)
    if not deltas:
        return values, col_idx, row_ptr
    delta = delta8_from_csr(values, col_idx, row_ptr)
    if csr_nbytes(*delta) < csr_nbytes(values, col_idx, row_ptr):
        return delta
    return values, col_idx, row_ptr


def dense_from_csr(values: np.ndarray, col_idx: np.ndarray, row_ptr: np.ndarray, num_columns: int) -> np.ndarray:
    """Inverse of :func:`csr_from_dense` and :func:`compact_csr` (float32 (N, K) matrix;
    a filler sits on a column no real entry of its row uses, and writes its 0 there)."""
    rows = len(row_ptr) - 1
    w = np.zeros((rows, num_columns), dtype=np.float32)
    counts = np.diff(np.asarray(row_ptr, dtype=np.int64))
    w[np.repeat(np.arange(rows), counts), columns_of(col_idx, row_ptr)] = values
    return w
