"""Labelled data for fine-tuning and evaluation: ``.npz`` loading and validation (numpy only).

An ``.npz`` archive holds ``x`` — fed to the model's single input as is, first axis = samples —
and ``y`` — integer class labels, shape ``(N,)``.  Key names are configurable
(``x_key``/``y_key``), so MNIST's ``x_train``/``y_train`` load directly.  Archives are always
opened with ``allow_pickle=False``: an object array is refused, never unpickled.

Which error, which exit code — one rule:

* the **file** cannot be used as data — missing, unreadable, not an ``.npz`` archive, holding
  pickled objects — :class:`InvalidDataError` (an :class:`InvalidModelError`, exit 4: input
  rejected as invalid or unsafe);
* the file reads fine but its **contents do not fit the model or the options** — a key that
  isn't there, x/y length mismatch, wrong rank or static dims, wrong dtype, labels outside
  ``[0, n_classes)``, NaN/Inf — :class:`DataMismatchError` (a :class:`UsageError`, exit 2:
  the user picked the wrong file, key or model).

dtype rule for ``x`` (checked against the model input's element type):

* float model input: float data is cast to the input's float type; integer data of at most
  16 bits (``uint8`` images, ``int16`` audio…) is cast too — exactly, *without* rescaling
  (a model trained on ``x/255`` must get scaled data, or carry the division in its graph);
  wider integers, bools and anything non-numeric are refused (a silent cast could round);
* integer model input: the data must have that exact integer dtype;
* NaN or ±Inf anywhere in a float ``x`` is refused.

Labels must be an integer array of shape ``(N,)`` (one-hot or float labels are refused, with
a hint); they are returned as ``int64``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zipfile
from collections.abc import Iterator

import numpy as np
import onnx

from onnxprune.core.errors import InvalidModelError, UsageError


class InvalidDataError(InvalidModelError):
    """A data file is missing, unreadable, not an npz archive, or unsafe (pickled objects)."""


class DataMismatchError(UsageError):
    """Data that reads fine but does not fit the model or the chosen options."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (first axis = sample) and integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The model's single data input: name, numpy dtype, dims (``None`` = symbolic/unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: rank unknown

    @property
    def batch_dim(self) -> int | None:
        return self.shape[0] if self.shape else None


# numpy raises these for a missing, truncated or non-zip file, and ValueError for an object
# array (allow_pickle=False refuses to unpickle it).
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[np.lib.npyio.NpzFile]:
    """The ``.npz`` archive at ``path``, opened without pickle support and closed on exit.

    The one way data files are opened: a file that cannot be used as an archive (missing,
    unreadable, a bare ``.npy``) raises :class:`InvalidDataError` (exit 4); read the arrays
    with :func:`npz_array`, which keeps to the same rule."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidDataError(f"data file {path!r} does not exist or is not a file")
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise InvalidDataError(f"cannot read data file {path!r}: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidDataError(f"data file {path!r} is a single .npy array, not an .npz archive")
    with archive:
        yield archive


def npz_array(archive: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    """Array ``key`` of the archive :func:`open_npz` opened at ``path`` (InvalidDataError if it
    cannot be read)."""
    try:
        return archive[key]
    except _NPZ_ERRORS as exc:
        raise InvalidDataError(f"cannot read arrays from {path!r}: {exc}") from exc


def load_npz(path: str | os.PathLike, *, x_key: str = "x", y_key: str = "y") -> Dataset:
    """Read ``x_key`` and ``y_key`` from an ``.npz`` archive (contents checked by :func:`check_dataset`)."""
    path = os.fspath(path)
    with open_npz(path) as archive:
        keys = list(archive.files)
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise DataMismatchError(
                f"data file {path!r} has no {' or '.join(repr(k) for k in missing)} array "
                f"(it holds {keys}); choose the keys with x_key/y_key"
            )
        return Dataset(x=npz_array(archive, x_key, path), y=npz_array(archive, y_key, path))


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The model's single non-initializer input (refuses models with zero or several)."""
    graph = model.graph
    inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise DataMismatchError(
            f"the model has {len(inputs)} data inputs {[i.name for i in inputs]}; "
            "fine-tuning and evaluation feed exactly one"
        )
    vi = inputs[0]
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
        raise DataMismatchError(f"model input {vi.name!r} is not a typed tensor")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    shape = None
    if tt.HasField("shape"):
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return InputSpec(name=vi.name, dtype=dtype, shape=shape)


def n_classes(model: onnx.ModelProto) -> int | None:
    """Static size of the first output's last axis (the class axis), or None if symbolic."""
    outs = model.graph.output
    if not outs or not outs[0].type.tensor_type.HasField("shape"):
        return None
    dims = outs[0].type.tensor_type.shape.dim
    if not dims or not dims[-1].HasField("dim_value"):
        return None
    return int(dims[-1].dim_value)


def coerce_x(x: np.ndarray, spec: InputSpec, *, what: str = "x") -> np.ndarray:
    """Check ``x`` against the model input and cast it per the module's dtype rule."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataMismatchError(f"{what} has dtype {x.dtype}; numeric data is required")
    if spec.shape is not None:
        if x.ndim != len(spec.shape):
            raise DataMismatchError(
                f"{what} has shape {x.shape} (rank {x.ndim}) but model input {spec.name!r} "
                f"has rank {len(spec.shape)} {_fmt_shape(spec.shape)}"
            )
        bad = [i for i, d in enumerate(spec.shape) if i > 0 and d is not None and x.shape[i] != d]
        if bad:
            raise DataMismatchError(
                f"{what} has shape {x.shape} but model input {spec.name!r} expects "
                f"{_fmt_shape(spec.shape)} (axis {bad[0]} differs)"
            )
    if spec.dtype.kind == "f":
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise DataMismatchError(f"{what} contains NaN or Inf values")
        elif x.dtype.kind in "iu" and x.dtype.itemsize <= 2:
            pass  # exact in any float type; no rescaling (see module docstring)
        else:
            raise DataMismatchError(
                f"{what} has dtype {x.dtype} but the model expects {spec.dtype}; only floats and "
                "integers of at most 16 bits are cast implicitly"
            )
        return x.astype(spec.dtype, copy=False)
    if x.dtype != spec.dtype:
        raise DataMismatchError(f"{what} has dtype {x.dtype} but the model input expects {spec.dtype}")
    return x


def coerce_y(y: np.ndarray, n: int, classes: int | None, *, what: str = "y") -> np.ndarray:
    """Check labels: integer, shape (n,), in [0, classes); returned as int64."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        hint = " (one-hot labels: store y.argmax(1))" if y.ndim == 2 else ""
        raise DataMismatchError(f"{what} has dtype {y.dtype}; integer class labels are required{hint}")
    if y.ndim != 1:
        raise DataMismatchError(f"{what} has shape {y.shape}; labels must be a 1-D array of class indices")
    if y.shape[0] != n:
        raise DataMismatchError(f"x has {n} samples but {what} has {y.shape[0]} labels")
    if n and y.min() < 0:
        raise DataMismatchError(f"{what} contains negative labels (min {int(y.min())})")
    if n and classes is not None and y.max() >= classes:
        raise DataMismatchError(
            f"{what} contains label {int(y.max())} but the model has {classes} classes (labels 0..{classes - 1})"
        )
    return y.astype(np.int64, copy=False)


def check_dataset(ds: Dataset, spec: InputSpec, classes: int | None, *, name: str = "data") -> Dataset:
    """Validate and coerce a whole dataset before any training or evaluation."""
    x = np.asarray(ds.x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataMismatchError(f"{name}: x holds no samples")
    x = coerce_x(x, spec, what=f"{name} x")
    y = coerce_y(ds.y, x.shape[0], classes, what=f"{name} y")
    return Dataset(x=x, y=y)


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def scores_output(model: onnx.ModelProto) -> str:
    """The graph output holding class scores: the first float output of rank 2, else the first.

    Classifiers exported from other frameworks often put a label output first (scikit-learn via
    skl2onnx: ``label`` then ``probabilities``); accuracy and retraining use the scores.
    """
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
              onnx.TensorProto.BFLOAT16)
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type in floats and tt.HasField("shape") and len(tt.shape.dim) == 2:
            return out.name
    return model.graph.output[0].name
