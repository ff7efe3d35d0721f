"""Model I/O: the only module that reads or writes ONNX protobuf files.

Invariants this module guarantees to everything downstream:

* ``load`` returns a ``ModelProto`` whose tensors all hold their bytes in memory; external data
  was read only from regular files inside the model's own folder (no absolute locations, no
  ``..`` components, no symbolic link anywhere on the way), within the file's bounds.
* ``save`` never writes under the final name until the whole file is on disk: it writes a
  temporary file in the output folder, flushes it, and renames it (``os.replace`` is atomic on
  POSIX).  The external data file is renamed into place before the model that points at it.
* ``save`` refuses to overwrite the input model or any file the input drew external data from
  unless ``in_place=True``.
* The same ``ModelProto`` always serialises to the same bytes (deterministic protobuf
  serialisation, external data laid out in graph order at 64-byte aligned offsets, no
  timestamps, no random names in the output).
* Sparse storage (``storage="portable"``) is decided here, after the passes: a float
  initializer becomes a ``SparseTensorProto`` with int64 linear indices (the only index type
  ``onnx.checker`` accepts) exactly when that makes it smaller than the dense bytes.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, SparseTensorProto, TensorProto

from onnxprune.errors import InvalidModelError, RuntimeFailure, UnsafePathError, UsageError

# A protobuf message cannot exceed 2 GiB; leave headroom for the graph itself.
PROTOBUF_LIMIT = 2**31 - 1
EMBED_LIMIT_BYTES = 1_800_000_000
# Tensors smaller than this stay embedded even when the model uses external data.
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 64

STORAGE_FORMS = ("dense", "portable")


@dataclasses.dataclass
class LoadInfo:
    """Where a model came from: what ``save`` needs to protect the input."""

    path: str
    data_files: tuple[str, ...]  # absolute paths of external data files read
    file_bytes: int  # size of the .onnx plus its data files


# --------------------------------------------------------------------------- tensor walk


def iter_tensors(graph: GraphProto, skip_sparse_initializers: bool = False) -> Iterator[TensorProto]:
    """Every TensorProto in a graph, subgraphs included, in a fixed (file) order."""
    yield from graph.initializer
    if not skip_sparse_initializers:
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: AttributeProto) -> Iterator[TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    if attr.HasField("sparse_tensor"):
        yield attr.sparse_tensor.values
        yield attr.sparse_tensor.indices
    for sp in attr.sparse_tensors:
        yield sp.values
        yield sp.indices
    if attr.HasField("g"):
        yield from iter_tensors(attr.g)
    for g in attr.graphs:
        yield from iter_tensors(g)


def _iter_all_tensors(model: ModelProto, skip_sparse_initializers: bool = False
                      ) -> Iterator[TensorProto]:
    yield from iter_tensors(model.graph, skip_sparse_initializers)
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr)


def _is_external(t: TensorProto) -> bool:
    return t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL


# --------------------------------------------------------------------------- load


def _resolve_external_location(base_dir: str, location: str, tensor_name: str) -> str:
    """Resolve ``location`` inside ``base_dir``; refuse anything that could leave it."""
    if not location:
        raise InvalidModelError(f"tensor {tensor_name!r}: external data has an empty location")
    if "\x00" in location:
        raise UnsafePathError(f"tensor {tensor_name!r}: external data location contains NUL")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (
        len(location) > 1 and location[1] == ":"
    ):
        raise UnsafePathError(
            f"tensor {tensor_name!r}: external data location {location!r} is absolute; "
            "only paths inside the model's folder are accepted"
        )
    parts = location.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(
            f"tensor {tensor_name!r}: external data location {location!r} escapes the "
            "model's folder ('..')"
        )
    # Walk component by component with lstat so that a symlinked file *or* folder is refused.
    current = base_dir
    for i, part in enumerate(p for p in parts if p not in ("", ".")):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise InvalidModelError(
                f"tensor {tensor_name!r}: external data file {location!r} not found "
                f"next to the model"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(
                f"tensor {tensor_name!r}: external data location {location!r} goes through "
                "a symbolic link; refused"
            )
    if not os.path.isfile(current):
        raise InvalidModelError(
            f"tensor {tensor_name!r}: external data location {location!r} is not a regular file"
        )
    return current


def _external_info(t: TensorProto) -> dict[str, str]:
    info = {}
    for entry in t.external_data:
        info[entry.key] = entry.value
    return info


def _read_external(t: TensorProto, base_dir: str, cache: dict[str, int]) -> str:
    info = _external_info(t)
    path = _resolve_external_location(base_dir, info.get("location", ""), t.name)
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InvalidModelError(
            f"tensor {t.name!r}: external data offset/length is not an integer"
        ) from None
    size = cache.setdefault(path, os.path.getsize(path))
    if offset < 0 or offset > size:
        raise InvalidModelError(
            f"tensor {t.name!r}: external data offset {offset} is outside {info['location']!r} "
            f"({size} bytes)"
        )
    if length is None:
        length = size - offset
    if length < 0 or offset + length > size:
        raise InvalidModelError(
            f"tensor {t.name!r}: external data [{offset}, {offset + length}) runs past the end "
            f"of {info['location']!r} ({size} bytes)"
        )
    expected = _expected_nbytes(t)
    if expected is not None and expected != length:
        raise InvalidModelError(
            f"tensor {t.name!r}: external data holds {length} bytes but shape "
            f"{list(t.dims)} needs {expected}"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise InvalidModelError(f"tensor {t.name!r}: short read from {info['location']!r}")
    t.raw_data = data
    t.data_location = TensorProto.DEFAULT
    del t.external_data[:]
    return path


_ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1,
}


def _expected_nbytes(t: TensorProto) -> int | None:
    item = _ITEMSIZE.get(t.data_type)
    if item is None:
        return None
    n = 1
    for d in t.dims:
        if d < 0:
            return None
        n *= d
    return n * item


def load(path: str | os.PathLike) -> tuple[ModelProto, LoadInfo]:
    """Read and validate a model; external data is loaded into memory.

    Raises ``InvalidModelError`` (exit 4) for anything that is not a loadable, safe model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InvalidModelError(f"{path}: is a directory, expected an .onnx file")
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidModelError(f"{path}: empty file")
    if size > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"{path}: {size} bytes is over protobuf's 2 GiB limit; store weights as external data"
        )
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise InvalidModelError(f"{path}: cannot read: {e.strerror}") from None
    model = ModelProto()
    try:
        model.ParseFromString(blob)
    except (DecodeError, RuntimeError, ValueError):
        raise InvalidModelError(f"{path}: not an ONNX model (protobuf parse failed)") from None
    del blob
    _validate_header(model, path)
    base_dir = os.path.dirname(os.path.abspath(path))
    data_files: list[str] = []
    sizes: dict[str, int] = {}
    for t in _iter_all_tensors(model):
        if _is_external(t):
            p = _read_external(t, base_dir, sizes)
            if p not in data_files:
                data_files.append(p)
    total = size + sum(sizes.values())
    return model, LoadInfo(path=os.path.abspath(path), data_files=tuple(data_files), file_bytes=total)


def _validate_header(model: ModelProto, path: str) -> None:
    if not model.HasField("graph") or not model.ir_version:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph or no ir_version)")
    if model.ir_version > onnx.IR_VERSION:
        raise InvalidModelError(
            f"{path}: ir_version {model.ir_version} is newer than this onnx "
            f"(onnx {onnx.__version__} supports up to {onnx.IR_VERSION}); upgrade onnx"
        )
    max_opset = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > max_opset:
            raise InvalidModelError(
                f"{path}: opset {op.version} is newer than this onnx supports ({max_opset}); "
                "upgrade onnx"
            )
    if len(model.graph.node) == 0:
        raise InvalidModelError(f"{path}: the graph has no nodes")


def load_model(path: str | os.PathLike) -> ModelProto:
    """``load`` without the provenance record."""
    return load(path)[0]


# --------------------------------------------------------------------------- portable sparse


def sparse_nbytes(nnz: int, itemsize: int) -> int:
    """Bytes a SparseTensorProto with 1-D int64 linear indices needs for its payload."""
    return nnz * (itemsize + 8)


def to_portable_sparse(model: ModelProto, *, protected: set[str] | None = None) -> list[str]:
    """Rewrite float initializers as ``SparseTensorProto`` where that is smaller.

    Indices are 1-D int64 linear positions in row-major order, sorted ascending.  Initializers
    that are also graph inputs (a user may override them) and names in ``protected`` stay dense.
    Returns the names converted.  Modifies ``model`` in place.
    """
    protected = set(protected or ())
    graph_inputs = {i.name for i in model.graph.input}
    keep: list[TensorProto] = []
    converted: list[str] = []
    new_sparse: list[SparseTensorProto] = []
    for init in model.graph.initializer:
        arr = None
        if (
            init.name not in graph_inputs
            and init.name not in protected
            and init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16,
                                   TensorProto.BFLOAT16, TensorProto.DOUBLE)
            and len(init.dims) >= 1
        ):
            arr = onnx.numpy_helper.to_array(init)
        if arr is None or arr.size == 0:
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        nz = np.flatnonzero(flat.astype(np.float32) != 0) if flat.dtype.itemsize == 2 else np.flatnonzero(flat)
        if sparse_nbytes(nz.size, arr.dtype.itemsize) >= arr.nbytes:
            keep.append(init)
            continue
        values = onnx.numpy_helper.from_array(np.ascontiguousarray(flat[nz]), init.name)
        indices = onnx.numpy_helper.from_array(nz.astype(np.int64), "")
        sp = SparseTensorProto()
        sp.values.CopyFrom(values)
        sp.indices.CopyFrom(indices)
        sp.dims.extend(init.dims)
        new_sparse.append(sp)
        converted.append(init.name)
    if converted:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        model.graph.sparse_initializer.extend(new_sparse)
    return converted


# --------------------------------------------------------------------------- save


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(out: str, source: LoadInfo | None, *, in_place: bool = False) -> str:
    """Validate an output path before any work is done; returns the data-file path it may use."""
    out = os.fspath(out)
    if not out:
        raise UsageError("output path is empty")
    folder = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(folder):
        raise UsageError(f"output folder {folder} does not exist")
    if os.path.isdir(out):
        raise UsageError(f"output {out} is a directory")
    data_path = out + ".data"
    if source is not None and not in_place:
        protected = (source.path, *source.data_files)
        for p in protected:
            for candidate in (out, data_path):
                if os.path.exists(candidate) and _same_file(candidate, p) or (
                    os.path.abspath(candidate) == os.path.abspath(p)
                ):
                    raise UsageError(
                        f"refusing to overwrite the input ({p}); choose another -o or pass "
                        "--in-place"
                    )
    return data_path


def _tensor_raw_bytes(t: TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return t.ByteSize()


def model_payload_bytes(model: ModelProto) -> int:
    return sum(_tensor_raw_bytes(t) for t in _iter_all_tensors(model))


def save(
    model: ModelProto,
    path: str | os.PathLike,
    *,
    source: LoadInfo | None = None,
    in_place: bool = False,
    external_data: bool | None = None,
) -> list[str]:
    """Write ``model`` atomically; returns the files written (model first).

    ``external_data=None`` chooses: external when the input used it or the model would not fit
    one protobuf.  ``model`` is restored to its in-memory form before returning.
    """
    path = os.fspath(path)
    data_path = check_output_path(path, source, in_place=in_place)
    payload = model_payload_bytes(model)
    if external_data is None:
        external_data = bool(source and source.data_files) or payload > EMBED_LIMIT_BYTES
    folder = os.path.dirname(os.path.abspath(path))
    written: list[str] = []
    tmp_model = tmp_data = None
    moved: list[tuple[TensorProto, bytes]] = []
    try:
        if external_data:
            fd, tmp_data = tempfile.mkstemp(prefix=".onnxprune-", suffix=".data.tmp", dir=folder)
            location = os.path.basename(data_path)
            # Sparse payloads stay embedded when they fit: onnx.checker cannot read a
            # SparseTensorProto's external data (ONNX Runtime can), so embedding them keeps
            # the portable file checkable.
            sparse_bytes = sum(_tensor_raw_bytes(x) for sp in model.graph.sparse_initializer
                               for x in (sp.values, sp.indices))
            embed_sparse = sparse_bytes < EMBED_LIMIT_BYTES // 2
            with os.fdopen(fd, "wb") as f:
                offset = 0
                for t in _iter_all_tensors(model, skip_sparse_initializers=embed_sparse):
                    if not t.HasField("raw_data") or len(t.raw_data) < EXTERNAL_MIN_BYTES:
                        continue
                    raw = t.raw_data
                    pad = (-offset) % EXTERNAL_ALIGN
                    if pad:
                        f.write(b"\0" * pad)
                        offset += pad
                    f.write(raw)
                    moved.append((t, raw))
                    t.ClearField("raw_data")
                    t.data_location = TensorProto.EXTERNAL
                    for k, v in (("location", location), ("offset", str(offset)),
                                 ("length", str(len(raw)))):
                        e = t.external_data.add()
                        e.key, e.value = k, v
                    offset += len(raw)
                    del raw
                f.flush()
                os.fsync(f.fileno())
        blob = model.SerializeToString(deterministic=True)
        if len(blob) > PROTOBUF_LIMIT:
            raise RuntimeFailure(
                "the model is over protobuf's 2 GiB limit even without its weights"
            )
        fd, tmp_model = tempfile.mkstemp(prefix=".onnxprune-", suffix=".onnx.tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        del blob
        if tmp_data is not None:
            os.chmod(tmp_data, 0o644)
            os.replace(tmp_data, data_path)
            tmp_data = None
            written.append(data_path)
        os.chmod(tmp_model, 0o644)
        os.replace(tmp_model, path)
        tmp_model = None
        written.insert(0, path)
    except OSError as e:
        raise RuntimeFailure(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for t, raw in moved:
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
            t.raw_data = raw
        for tmp in (tmp_model, tmp_data):
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return written


def save_with_storage(
    model: ModelProto,
    path: str | os.PathLike,
    *,
    storage: str = "dense",
    source: LoadInfo | None = None,
    in_place: bool = False,
    external_data: bool | None = None,
    protected: set[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Apply the storage form, then ``save``; returns (files written, tensors stored sparse)."""
    if storage not in STORAGE_FORMS:
        raise UsageError(f"unknown storage form {storage!r}; expected one of {STORAGE_FORMS}")
    sparse: list[str] = []
    if storage == "portable":
        sparse = to_portable_sparse(model, protected=protected)
    return save(model, path, source=source, in_place=in_place, external_data=external_data), sparse


def serialize_for_runtime(model: ModelProto) -> bytes:
    """Bytes to hand to ``onnxruntime.InferenceSession`` (models under 2 GiB)."""
    return model.SerializeToString(deterministic=True)
