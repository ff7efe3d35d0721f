"""Data for fine-tuning and evaluation: ``.npz`` loading and validation (numpy only).

An ``.npz`` archive holds the model's inputs, first axis = samples, and optionally ``y`` —
integer class labels, shape ``(N,)``:

* a model with one data input: the array ``x`` (``x_key``), or one named after the input;
* a model with several: one array per graph input, named after it (``input_ids``,
  ``attention_mask``…); every other array except ``y`` is refused (a misspelt name).

All arrays share the first (sample) dimension.  Key names are configurable
(``x_key``/``y_key``), so MNIST's ``x_train``/``y_train`` load directly.  Without ``y`` the
data is label-free: retraining then follows the dense model's outputs (objective ``match``)
and validation measures fidelity to them (:class:`Reference`).  Archives are always opened
with ``allow_pickle=False``: an object array is refused, never unpickled.

The **sample axis** of a model input — where a run takes its samples — is found per input
(:func:`resolve_specs`); the array always holds its samples on axis 0.  A recurrent model's
state often has its batch elsewhere (silero-vad's LSTM ``state`` is ``[2, 1, 128]``, batch 1
on axis 1), so for an input of declared shape ``M`` and an array of shape ``(N, *S)``:

* axis ``a`` *fits* when ``M`` without axis ``a`` equals ``S`` (compared where ``M`` is fixed;
  a symbolic dim matches anything);
* axis ``a`` is *a batch axis* when ``M[a]`` is symbolic — of the batch's symbol when the
  other inputs name one and some fitting axis carries it — or fixed at the model's fixed
  batch.  That batch is read from the other inputs' axis 0 where it fits: symbolic if any of
  those is, else the one fixed size they share (none, or sizes that differ: only a symbolic
  dim can be a batch axis — a fixed one cannot be told from a feature dim);
* the sample axis is 0 when axis 0 fits and is a batch axis (the usual case, unchanged), else
  the one fitting batch axis; several that lay a batch of one out alike (size-1 dims side by
  side) count as one.  None: axis 0 if it fits (its fixed dim is then the batch, checked
  against the other inputs by :func:`fixed_batch`), else :class:`DataMismatchError`; two or
  more: :class:`DataMismatchError` naming them (exit 2, before anything runs).

Every run of the model is fed by :func:`model_batch`: samples ``i..j`` of each input, moved
to its sample axis (``np.moveaxis(arr[i:j], 0, a)``); outputs are read as they come, the runs
joined on axis 0 — or, where runs of different sizes differ on another axis only (a state
output ``[2, batch, H]`` of a symbolic batch), on that axis (:func:`concat_runs`).

Which error, which exit code — one rule:

* the **file** cannot be used as data — missing, unreadable, not an ``.npz`` archive, holding
  pickled objects — :class:`InvalidDataError` (an :class:`InvalidModelError`, exit 4: input
  rejected as invalid or unsafe);
* the file reads fine but its **contents do not fit the model or the options** — a key that
  isn't there, an array named after no graph input, inputs or labels of different lengths,
  wrong rank or static dims, wrong dtype, labels outside
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

from onnxprune.core.errors import InvalidModelError, UsageError, short_repr
from onnxprune.core.io import dim_size


class InvalidDataError(InvalidModelError):
    """A data file is missing, unreadable, not an npz archive, or unsafe (pickled objects)."""


class DataMismatchError(UsageError):
    """Data that reads fine but does not fit the model or the chosen options."""


class OutputKindError(UsageError, ValueError):
    """An ``--output-kind`` override that names no float graph output, asks for a kind other
    than ``scores``/``values``, or asks for ``scores`` on an output that is not ``[N, C>=2]``
    (a ``ValueError`` to library callers, exit 2 on the command line)."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """The dense model's float outputs on a data set (``outputs``: name → array, first axis =
    sample) and how each is compared (``kinds``: name → ``"scores"`` or ``"values"``, see
    :func:`output_kinds`): what label-free validation measures fidelity against."""

    outputs: dict
    kinds: dict


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (first axis = sample; one array, or name → array for several inputs),
    integer labels ``y`` (``None``: label-free) and, for fidelity validation, the dense
    model's outputs ``reference``."""

    x: "np.ndarray | dict[str, np.ndarray]"
    y: np.ndarray | None = None
    reference: Reference | None = None

    def __len__(self) -> int:
        return n_samples(self.x)


def n_samples(x) -> int:
    """Sample count of one input array or of a name → array mapping (its first array that has
    samples: a 0-d array is a setting fed whole to every run, see :func:`is_setting`)."""
    if isinstance(x, dict):
        return next((int(v.shape[0]) for v in x.values() if not is_setting(v)), 0)
    return int(np.shape(x)[0])


def is_setting(v) -> bool:
    """A 0-d array: the value of a scalar (rank-0) model input — silero's sample rate ``sr`` —
    that every run takes as it is; it has no samples to slice."""
    return len(np.shape(v)) == 0 if not hasattr(v, "dim") else v.dim() == 0


def take(x, index):
    """Rows ``index`` (a slice or index array) of one array or of every array of a mapping
    (settings pass whole)."""
    if isinstance(x, dict):
        return {k: v if is_setting(v) else v[index] for k, v in x.items()}
    return x[index]


def feeds(x, specs: "list[InputSpec]") -> dict:
    """Input name → array, for one array (the single input) or a mapping."""
    return dict(x) if isinstance(x, dict) else {specs[0].name: x}


def model_batch(x, specs: "list[InputSpec]", start: int = 0, stop: int | None = None,
                pad_to: int | None = None) -> dict:
    """Samples ``start..stop-1`` of every input shaped for one run of the model: input name →
    array (numpy, or torch tensors: only indexing and ``movedim`` are used).

    ``x``: one array or name → array, samples on axis 0.  With ``pad_to``, a short batch is
    padded to ``pad_to`` samples by repeating its last one (a model whose batch is fixed);
    then each input's samples move from axis 0 to its :attr:`InputSpec.sample_axis`.  The one
    place data is laid out for the model (module doc)."""
    n = n_samples(x)
    stop = n if stop is None else min(stop, n)
    index: "slice | list[int]" = slice(start, stop)
    if pad_to is not None and stop - start < pad_to:
        index = [*range(start, stop), *[stop - 1] * (pad_to - (stop - start))]
    axes = {s.name: s.sample_axis for s in specs}
    return {k: _to_axis(v, axes.get(k, 0)) for k, v in feeds(take(x, index), specs).items()}


def concat_runs(parts: list, what: str = "output"):
    """The outputs of successive runs joined: on axis 0 (as they come), or — runs of different
    sizes of an output whose samples are on another axis (a state ``[2, batch, H]``) — on
    the one axis where they differ.  Numpy arrays, or torch tensors (``torch.cat``)."""
    full = [tuple(p.shape) for p in parts]
    axis = 0
    if len({f[1:] for f in full}) > 1:
        same_rank = len({len(f) for f in full}) == 1
        differ = {i for f in full for i in range(len(f)) if f[i] != full[0][i]} if same_rank else set()
        if len(differ) != 1:
            raise DataMismatchError(f"{what}: the runs give shapes {sorted(set(full))}, which do "
                                    "not join along one sample axis")
        axis = differ.pop()
    if hasattr(parts[0], "movedim"):
        import torch

        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def _to_axis(v, axis: int):
    """``v`` with its axis 0 moved to ``axis`` (a view: numpy ``moveaxis``, torch ``movedim``)."""
    if axis == 0:
        return v
    return v.movedim(0, axis) if hasattr(v, "movedim") else np.moveaxis(v, 0, axis)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model data input: name, numpy dtype, dims (``None`` = symbolic/unknown), the names of
    its symbolic dims (``symbols``, ``None`` where fixed or unnamed) and where a run takes its
    samples (``sample_axis``, set by :func:`resolve_specs`; 0 until then)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: rank unknown
    symbols: tuple[str | None, ...] = ()
    sample_axis: int = 0

    @property
    def batch_dim(self) -> int | None:
        return self.shape[self.sample_axis] if self.shape else None


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
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise InvalidDataError(f"cannot read data file {path!r}: {exc}") from exc
    if not magic.startswith(b"PK") and not magic.startswith(b"\x93NUMPY"):
        # numpy would take it for a pickle and suggest allow_pickle=True, which is never right
        raise InvalidDataError(f"data file {path!r} is not an .npz archive (numpy.savez writes one)")
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
    specs = input_specs(model)
    if len(specs) != 1:
        raise DataMismatchError(
            f"the model has {len(specs)} data inputs {[s.name for s in specs]}; "
            "this use feeds exactly one"
        )
    return specs[0]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Every non-initializer input of the model, in graph order (at least one)."""
    graph = model.graph
    inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        raise DataMismatchError("the model has no data input")
    return [_spec(vi) for vi in inputs]


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size the model's inputs fix (their common static first dim), None if free."""
    dims = {s.batch_dim for s in specs if s.batch_dim is not None}
    if len(dims) > 1:
        raise DataMismatchError(f"the model's inputs fix different batch sizes {sorted(dims)}")
    return dims.pop() if dims else None


def _spec(vi) -> InputSpec:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
        raise DataMismatchError(f"model input {vi.name!r} is not a typed tensor")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    shape, symbols = None, ()
    if tt.HasField("shape"):
        shape = tuple(dim_size(d) for d in tt.shape.dim)
        symbols = tuple(d.dim_param or None if dim_size(d) is None else None for d in tt.shape.dim)
    return InputSpec(name=vi.name, dtype=dtype, shape=shape, symbols=symbols)


def resolve_specs(specs: list[InputSpec], x, name: str = "data") -> list[InputSpec]:
    """``specs`` with each input's :attr:`~InputSpec.sample_axis` found for data ``x`` (one
    array or name → array, samples on axis 0; only shapes are read) by the module doc's rule.
    An input without data or of another rank keeps axis 0 (:func:`coerce_x` then says what is
    wrong).  :class:`DataMismatchError` when no axis fits or several do."""
    arrays = feeds(x, specs)
    sample_shapes = {s.name: tuple(arrays[s.name].shape[1:]) for s in specs
                     if s.name in arrays and len(arrays[s.name].shape) >= 1}
    out = []
    for s in specs:
        got = sample_shapes.get(s.name)
        if s.shape is None or got is None or len(got) + 1 != len(s.shape):
            out.append(s)
            continue
        others = [o for o in specs if o.name != s.name and o.shape is not None
                  and o.name in sample_shapes and len(sample_shapes[o.name]) + 1 == len(o.shape)]
        batch = _batch_of([o for o in others if _fits(o.shape, 0, sample_shapes[o.name])])
        axis = _sample_axis(s, got, batch, _what(name, s, specs), len(arrays[s.name]))
        out.append(dataclasses.replace(s, sample_axis=axis))
    return out


def sample_axes(specs: list[InputSpec]) -> dict[str, int]:
    """Input name → sample axis, for the inputs whose samples are not on axis 0 (what the
    reports state)."""
    return {s.name: s.sample_axis for s in specs if s.sample_axis}


def _what(name: str, spec: InputSpec, specs: list[InputSpec]) -> str:
    return f"{name} {spec.name!r}" if len(specs) > 1 else f"{name} x"


def _fits(shape: tuple, axis: int, sample: tuple) -> bool:
    """Whether ``shape`` without ``axis`` equals ``sample`` where ``shape`` is fixed."""
    rest = shape[:axis] + shape[axis + 1:]
    return len(rest) == len(sample) and all(d is None or d == g for d, g in zip(rest, sample))


def _batch_of(others: list[InputSpec]) -> "tuple[str, object] | None":
    """The model's batch as the other inputs give it on their fitting axis 0:
    ``("symbolic", names)``, ``("fixed", size)``, or None (none, or fixed sizes that differ)."""
    dims = [(o.shape[0], o.symbols[0] if o.symbols else None) for o in others]
    if any(d is None for d, _ in dims):
        return "symbolic", {sym for d, sym in dims if d is None and sym}
    sizes = {d for d, _ in dims}
    return ("fixed", sizes.pop()) if len(sizes) == 1 else None


def _sample_axis(spec: InputSpec, sample: tuple, batch, what: str, n: int) -> int:
    """The sample axis of one input whose samples have shape ``sample`` (module doc)."""
    shape = spec.shape
    fitting = [a for a in range(len(shape)) if _fits(shape, a, sample)]
    if batch is None or batch[0] == "symbolic":
        cands = [a for a in fitting if shape[a] is None]
        named = [a for a in cands if batch and spec.symbols and spec.symbols[a] in batch[1]]
        cands = named or cands
    else:
        cands = [a for a in fitting if shape[a] is None or shape[a] == batch[1]]
    if 0 in cands:
        return 0
    if len(cands) > 1 and all(shape[a] == 1 for a in cands) \
            and len({sample[:a] + (1,) + sample[a:] for a in cands}) == 1:
        cands = cands[:1]  # a batch of one laid out alike on each: the same feed
    if len(cands) == 1:
        return cands[0]
    full = (n, *sample)
    if cands:
        raise DataMismatchError(
            f"{what} has shape {full}: model input {spec.name!r} {_fmt_shape(shape)} could take "
            f"its samples on axis {' or '.join(map(str, cands))} (ambiguous; considered axes "
            f"{', '.join(map(str, range(len(shape))))})")
    if 0 in fitting:
        return 0  # today's rule: axis 0, its fixed dim the batch (fixed_batch checks it)
    bad = next(i for i, (d, g) in enumerate(zip(shape[1:], sample), 1) if d is not None and g != d)
    raise DataMismatchError(
        f"{what} has shape {full} but model input {spec.name!r} expects {_fmt_shape(shape)} "
        f"(axis {bad} differs; no axis fits as its sample axis: considered axes "
        f"{', '.join(map(str, range(len(shape))))}, the batch being "
        f"{_batch_text(batch)})")


def _batch_text(batch) -> str:
    if batch is None:
        return "symbolic (no other input fixes it)"
    if batch[0] == "symbolic":
        return "symbolic" + (f" {', '.join(sorted(batch[1]))}" if batch[1] else "")
    return f"fixed at {batch[1]}"


def n_classes(model: onnx.ModelProto) -> int | None:
    """Static size of the first output's last axis (the class axis), or None if symbolic."""
    outs = model.graph.output
    if not outs or not outs[0].type.tensor_type.HasField("shape"):
        return None
    dims = outs[0].type.tensor_type.shape.dim
    return dim_size(dims[-1]) if dims else None


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
        # The samples' dims against the model's without its sample axis (module doc).
        a = spec.sample_axis
        rest = spec.shape[:a] + spec.shape[a + 1:]
        bad = [i for i, d in enumerate(rest, 1) if d is not None and x.shape[i] != d]
        if bad:
            raise DataMismatchError(
                f"{what} has shape {x.shape} but model input {spec.name!r} expects "
                f"{_fmt_shape(spec.shape)}{f' with its samples on axis {a}' if a else ''} "
                f"(axis {bad[0]} differs)"
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


def check_dataset(ds: Dataset, spec: "InputSpec | list[InputSpec]", classes: int | None, *,
                  name: str = "data", labels: bool = True) -> Dataset:
    """Validate and coerce a whole dataset before any training or evaluation.

    ``spec``: the model's input(s).  Several inputs need ``x`` as a mapping with exactly one
    array per input name; every array and ``y`` must have the same number of samples.
    ``labels``: whether ``y`` is required (a label-free set has ``y = None``)."""
    specs = spec if isinstance(spec, list) else [spec]
    x = _check_inputs(ds.x, specs, name)
    specs = resolve_specs(specs, x, name)
    n = n_samples(x)
    if ds.y is None:
        if labels:
            raise DataMismatchError(f"{name}: the data holds no labels 'y' (needed here)")
        y = None
    else:
        y = coerce_y(ds.y, n, classes, what=f"{name} y")
    if ds.reference is not None:
        short = [k for k, v in ds.reference.outputs.items() if not _rows_fit(np.shape(v), n, specs)]
        if short:
            raise DataMismatchError(f"{name}: reference outputs {short} do not have {n} samples")
    return Dataset(x=x, y=y, reference=ds.reference)


def _rows_fit(shape: tuple, n: int, specs: list[InputSpec]) -> bool:
    """Whether a reference output of ``shape`` belongs to ``n`` samples: one row per sample,
    or — a model whose batch is fixed at b, run ⌈n/b⌉ times — whole per-run outputs
    concatenated (an output whose sample axis is not the first, e.g. a recogniser's
    ``[T, 1, C]``, gives T rows per run), or n samples on another axis (runs joined there,
    :func:`concat_runs`)."""
    rows = shape[0] if shape else 0
    b = fixed_batch(specs)
    runs = -(-n // b) if b else 0
    return rows == n or (runs > 0 and rows > 0 and rows % runs == 0) or n in shape[1:]


def _check_inputs(x, specs: list[InputSpec], name: str):
    """The inputs of a data set checked and coerced: one array for a single-input model, else
    input name → array (names exactly the graph's; the same sample count everywhere)."""
    if not isinstance(x, dict):
        if len(specs) != 1:
            raise DataMismatchError(
                f"{name}: the model has {len(specs)} inputs {[s.name for s in specs]}; "
                "give one array per input, named after it")
        x = {specs[0].name: x}
    wanted = [s.name for s in specs]
    missing = [k for k in wanted if k not in x]
    extra = sorted(set(x) - set(wanted))
    if missing or extra:
        raise DataMismatchError(
            f"{name}: the arrays {sorted(x)} do not match the model's inputs {wanted}"
            + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
    arrays = {s.name: np.asarray(x[s.name]) for s in specs}
    for s in specs:
        scalar = s.shape is not None and len(s.shape) == 0
        if scalar and arrays[s.name].ndim != 0:
            raise DataMismatchError(
                f"{name}: model input {s.name!r} is a scalar (rank 0), fed one value for every "
                f"run; give it as a 0-d array (np.array(v)), not shape {arrays[s.name].shape}")
        if not scalar and (arrays[s.name].ndim == 0 or arrays[s.name].shape[0] == 0):
            raise DataMismatchError(f"{name}: input {s.name!r} holds no samples")
    if all(is_setting(v) for v in arrays.values()):
        raise DataMismatchError(f"{name}: every input is a scalar setting; the data holds no samples")
    out = {s.name: coerce_x(arrays[s.name], s, what=_what(name, s, specs))
           for s in resolve_specs(specs, arrays, name)}
    lengths = {k: v.shape[0] for k, v in out.items() if not is_setting(v)}
    if len(set(lengths.values())) > 1:
        raise DataMismatchError(f"{name}: the inputs have different sample counts {lengths}")
    return out[specs[0].name] if len(specs) == 1 else out


def load_data(path: str | os.PathLike, model: "onnx.ModelProto | list[InputSpec]", *,
              x_key: str = "x", y_key: str = "y") -> Dataset:
    """The data set in an ``.npz`` for ``model`` (or its :func:`input_specs`) — module doc:
    ``x_key`` or the input's name for one input, one array per input name for several,
    optional ``y_key``; the contents are checked by :func:`check_dataset`."""
    path = os.fspath(path)
    specs = model if isinstance(model, list) else input_specs(model)
    with open_npz(path) as archive:
        keys = list(archive.files)
        y = npz_array(archive, y_key, path) if y_key in keys else None
        if len(specs) == 1:
            key = x_key if x_key in keys else specs[0].name if specs[0].name in keys else None
            if key is None:
                raise DataMismatchError(
                    f"data file {path!r} has no {x_key!r} (or {specs[0].name!r}) array (it holds "
                    f"{keys}); choose the keys with --x-key/--y-key")
            return Dataset(x=npz_array(archive, key, path), y=y)
        names = [k for k in keys if k != y_key]
        wanted = [s.name for s in specs]
        if sorted(names) != sorted(wanted):
            missing = [k for k in wanted if k not in names]
            extra = [k for k in names if k not in wanted]
            raise DataMismatchError(
                f"data file {path!r} holds {keys}; the model's inputs are {wanted}: one array "
                f"per input, named after it, and optionally {y_key!r}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else ""))
        return Dataset(x={k: npz_array(archive, k, path) for k in wanted}, y=y)


def has_labels(path: str | os.PathLike, y_key: str = "y") -> bool:
    """Whether the ``.npz`` at ``path`` holds a labels array ``y_key``."""
    with open_npz(path) as archive:
        return y_key in archive.files


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


FLOAT_OUTPUTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                 onnx.TensorProto.BFLOAT16)
# Output names that mark class scores (checked case-insensitively, as substrings).
SCORE_NAMES = ("logit", "score", "prob", "class")
_SCORE_OPS = ("Softmax", "LogSoftmax")
# How an output is followed and validated (:func:`output_kinds`); ``--output-kind`` picks one.
OUTPUT_KINDS = ("scores", "values")


def float_outputs(model: onnx.ModelProto) -> list[str]:
    """The graph outputs of a floating-point element type (the ones label-free retraining
    follows); integer and bool outputs (labels, indices, masks) take no part."""
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in FLOAT_OUTPUTS]


# Ops that only reshape or broadcast the denominator of a softmax written out.
_BROADCAST_OPS = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity")


def softmax_logits(name: str, producer) -> str | None:
    """``z`` when tensor ``name`` is a softmax written out, ``exp(z) / Σ exp(z)`` —
    ``Div(Exp(z), ReduceSum(Exp(z)))``, the sum possibly reshaped or broadcast (jax2tf and
    other exporters emit this instead of Softmax) — else None.  ``producer``: tensor name →
    ``(op_type, inputs)`` of the node producing it, or None."""
    div = producer(name)
    if div is None or div[0] != "Div" or len(div[1]) != 2:
        return None
    exp = producer(div[1][0])
    if exp is None or exp[0] != "Exp":
        return None
    den = producer(div[1][1])
    while den is not None and den[0] in _BROADCAST_OPS and den[1]:
        den = producer(den[1][0])
    if den is not None and den[0] == "ReduceSum" and den[1] and den[1][0] == div[1][0]:
        return exp[1][0]
    return None


def output_kinds(model: onnx.ModelProto, shapes: dict, overrides=None) -> dict[str, str]:
    """How each float output is compared with the dense model's: ``"scores"`` or ``"values"``.

    The rule: an output is **class scores** when its value is 2-D ``[N, C]`` with ``C >= 2``
    (``shapes``: name → an observed shape) and it is produced by, or read by, a
    ``Softmax``/``LogSoftmax`` (or ``ArgMax``) node, looking through ``Identity``/``Dropout``
    nodes before the output (Paddle ends its models Softmax → Identity), is a softmax written out
    (:func:`softmax_logits`), or its name contains one of
    :data:`SCORE_NAMES` (``logits``, ``scores``, ``probs``, ``class``…).  Scores are followed
    with KL divergence at a temperature and validated by top-1 agreement; every other float
    output (boxes, embeddings, feature maps, regression values) with variance-normalised
    squared error, validated by relative error.

    ``overrides`` (name → kind, ``--output-kind``) wins over the rule; it is checked by
    :func:`check_output_kinds`, and ``"scores"`` on an output whose observed shape is not
    ``[N, C>=2]`` raises :class:`OutputKindError` (KL and top-1 need class scores)."""
    overrides = check_output_kinds(model, overrides)
    for name, kind in overrides.items():
        shape = tuple(shapes.get(name, ()))
        if kind == "scores" and not _class_scores_shape(shape):
            raise OutputKindError(
                f"--output-kind {name}=scores: the output has shape {list(shape)}, class scores "
                "are 2-D [N, C] with C >= 2 (KL divergence and top-1 agreement compare rows of "
                f"scores); use {name}=values")
    return {**_rule_kinds(model, shapes), **overrides}


def _class_scores_shape(shape: tuple) -> bool:
    """Whether an observed shape can hold class scores: ``[N, C]`` with ``C >= 2``."""
    return len(shape) == 2 and shape[1] >= 2


def check_output_kinds(model: onnx.ModelProto, overrides) -> dict[str, str]:
    """``overrides`` (name → kind, or ``(name, kind)`` pairs; None = none) as a dict, each
    name a float graph output of ``model`` (:func:`float_outputs`) and each kind ``scores`` or
    ``values``, else :class:`OutputKindError`.  Needs no data: callers check it before any."""
    pairs = list((overrides or {}).items()) if isinstance(overrides, dict) or overrides is None \
        else list(overrides)
    floats = float_outputs(model)
    checked: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise OutputKindError(f"--output-kind: expected NAME=KIND pairs, got {short_repr(pair)}")
        name, kind = pair
        if kind not in OUTPUT_KINDS:
            raise OutputKindError(f"--output-kind {short_repr(name)}: the kind must be one of "
                                  f"{', '.join(OUTPUT_KINDS)}, got {short_repr(kind)}")
        if name not in floats:
            raise OutputKindError(f"--output-kind: {short_repr(name)} is not a floating-point "
                                  f"output of the model (those are: {', '.join(floats) or 'none'})")
        if name in checked and checked[name] != kind:
            raise OutputKindError(f"--output-kind {name}: given as both {checked[name]} and {kind}")
        checked[name] = kind
    return checked


def _rule_kinds(model: onnx.ModelProto, shapes: dict) -> dict[str, str]:
    """:func:`output_kinds` without overrides: the rule alone."""
    graph = model.graph
    nodes = {o: n for n in graph.node for o in n.output}
    producer = {o: n.op_type for o, n in nodes.items()}
    readers: dict[str, set] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    def source(t: str) -> str:
        # through the pass-through nodes exporters put before an output (Paddle ends every model
        # Softmax -> Identity -> output), at most as many as there are nodes
        for _ in range(len(graph.node)):
            n = nodes.get(t)
            if n is None or n.op_type not in ("Identity", "Dropout") or not n.input or not n.input[0]:
                break
            t = n.input[0]
        return t

    kinds = {}
    for name in float_outputs(model):
        shape = tuple(shapes.get(name, ()))
        src = source(name)
        scoreish = (producer.get(src) in _SCORE_OPS
                    or softmax_logits(src, lambda t: (nodes[t].op_type, list(nodes[t].input))
                                      if t in nodes else None) is not None
                    or (readers.get(name, set()) | readers.get(src, set())) & {*_SCORE_OPS, "ArgMax"}
                    or any(w in name.lower() for w in SCORE_NAMES))
        kinds[name] = "scores" if _class_scores_shape(shape) and scoreish else "values"
    return kinds
