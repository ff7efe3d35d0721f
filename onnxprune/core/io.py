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
  ``onnx.checker`` accepts) when that saves at least ``SPARSE_MIN_SAVING`` of its dense bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import stat
import tempfile
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto

from onnxprune.core.errors import InvalidModelError, RuntimeFailure, UnsafePathError, UsageError

# A protobuf message cannot exceed 2 GiB; leave headroom for the graph itself.
PROTOBUF_LIMIT = 2**31 - 1
EMBED_LIMIT_BYTES = 1_800_000_000
# Tensors smaller than this stay embedded even when the model uses external data.
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 64

STORAGE_FORMS = ("dense", "portable")


@dataclasses.dataclass(frozen=True)
class ExternalRef:
    """A validated slice of an external data file."""

    path: str  # absolute, inside the model's folder, no symlinks on the way
    offset: int
    length: int
    data_type: int
    dims: tuple[int, ...]
    location: str = ""  # as written in the tensor that refers to it

    def describes(self, t: TensorProto) -> bool:
        """Whether ``t`` is the external tensor this reference was validated from.

        A name alone does not identify a tensor (a branch initializer or a Constant's value may
        reuse a top-level name), so the location, offset, type and shape must match too.
        """
        if not _is_external(t):
            return False
        info = _external_info(t)
        try:
            offset = int(info.get("offset", "0"))
        except ValueError:
            return False
        return (info.get("location") == self.location and offset == self.offset
                and t.data_type == self.data_type and tuple(t.dims) == self.dims)


@dataclasses.dataclass
class LoadInfo:
    """Where a model came from: what ``save`` needs to protect the input, and lazy weights."""

    path: str
    data_files: tuple[str, ...]  # absolute paths of external data files read
    file_bytes: int  # size of the .onnx plus its data files
    # Top-level initializer name → its bytes in an external file, for models loaded with
    # ``lazy=True`` (those initializers are left as external references in the ModelProto;
    # every other tensor holds its bytes).  Look a tensor up with ``ref_of``, not by name.
    external: dict[str, ExternalRef] = dataclasses.field(default_factory=dict)

    _maps: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def ref_of(self, t: TensorProto) -> ExternalRef | None:
        """The validated reference of the lazily loaded tensor ``t`` itself, else None."""
        ref = self.external.get(t.name)
        return ref if ref is not None and ref.describes(t) else None

    def array(self, name: str) -> np.ndarray:
        """A read-only view of an external initializer in a memory map (no copy, no write)."""
        return self.array_of(self.external[name])

    def array_of(self, ref: ExternalRef) -> np.ndarray:
        """A read-only view of ``ref``'s bytes in a memory map (whole-byte element types)."""
        dtype = tensor_dtype(ref.data_type)
        if ref.length == 0:
            return np.zeros(ref.dims, dtype=dtype)
        buf = self._maps.get(ref.path)
        if buf is None:
            buf = self._maps[ref.path] = _map_file(ref.path)
        count = ref.length // dtype.itemsize
        return np.frombuffer(buf, dtype=dtype, count=count, offset=ref.offset).reshape(ref.dims)


# Map data files up to this size with MAP_POPULATE: one kernel call faults every page in,
# instead of a page fault per 4 KiB while the passes read the weights.
POPULATE_LIMIT = 8 << 30


def _map_file(path: str):
    import mmap

    size = os.path.getsize(path)
    flags = mmap.MAP_SHARED
    if size <= POPULATE_LIMIT and hasattr(mmap, "MAP_POPULATE"):
        flags |= mmap.MAP_POPULATE
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- tensor walk


def iter_tensors(graph: GraphProto, skip_sparse: bool = False) -> Iterator[TensorProto]:
    """Every TensorProto in a graph, subgraphs included, in a fixed (file) order.

    The graph's initializers come first.  ``skip_sparse`` leaves out the parts of sparse
    tensors (sparse initializers and sparse attributes).
    """
    yield from graph.initializer
    if not skip_sparse:
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr, skip_sparse)


def _attribute_tensors(attr: AttributeProto, skip_sparse: bool = False) -> Iterator[TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    if not skip_sparse:
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sp in attr.sparse_tensors:
            yield sp.values
            yield sp.indices
    if attr.HasField("g"):
        yield from iter_tensors(attr.g, skip_sparse)
    for g in attr.graphs:
        yield from iter_tensors(g, skip_sparse)


def _training_graphs(model: ModelProto) -> Iterator[GraphProto]:
    """The initialization and algorithm graphs of ``training_info`` (those present)."""
    for ti in model.training_info:
        for field in ("initialization", "algorithm"):
            if ti.HasField(field):
                yield getattr(ti, field)


def _iter_all_tensors(model: ModelProto, skip_sparse: bool = False) -> Iterator[TensorProto]:
    """Every TensorProto of the model: main graph first (its initializers leading), then
    ``training_info`` graphs, then model-local functions."""
    yield from iter_tensors(model.graph, skip_sparse)
    for g in _training_graphs(model):
        yield from iter_tensors(g, skip_sparse)
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr, skip_sparse)


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


def _validate_external(t: TensorProto, base_dir: str, cache: dict[str, int]) -> ExternalRef:
    if t.data_type == TensorProto.STRING:
        raise InvalidModelError(f"tensor {t.name!r}: a string tensor cannot be stored as "
                                "external data (it has no raw byte form)")
    if not _known_type(t.data_type):
        raise InvalidModelError(f"tensor {t.name!r}: external data of unknown data type "
                                f"{t.data_type}")
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
    expected = tensor_nbytes(t.data_type, t.dims)
    if expected is None:
        raise InvalidModelError(f"tensor {t.name!r}: negative dimension in {list(t.dims)}")
    if expected != length:
        raise InvalidModelError(
            f"tensor {t.name!r}: external data holds {length} bytes but shape "
            f"{list(t.dims)} needs {expected}"
        )
    return ExternalRef(path, offset, length, t.data_type, tuple(int(d) for d in t.dims),
                       info["location"])


def _read_ref(ref: ExternalRef) -> bytes:
    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.length)
    if len(data) != ref.length:
        raise InvalidModelError(f"short read from {ref.path}")
    return data


def _embed(t: TensorProto, data: bytes) -> None:
    t.raw_data = data
    t.ClearField("data_location")  # DEFAULT, unwritten: as the input had it, two bytes less a tensor
    del t.external_data[:]


# Bits per element of the types stored packed (several elements to a byte): raw data holds
# ceil(n·bits/8) bytes.  Every other type but STRING takes its numpy item size per element.
_PACKED_BITS = {getattr(TensorProto, n): bits for n, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
    ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)) if hasattr(TensorProto, n)}
_COMPLEX = frozenset({TensorProto.COMPLEX64, TensorProto.COMPLEX128})


def _element_count(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def tensor_nbytes(data_type: int, dims) -> int | None:
    """Bytes of raw (or external) data a tensor of this type and shape holds.

    Packed types take ceil(n·bits/8) bytes; the others n × item size.  None where the type has
    no raw form (STRING), is unknown, or a dimension is negative.
    """
    if any(int(d) < 0 for d in dims) or data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    n = _element_count(dims)
    bits = _PACKED_BITS.get(data_type)
    if bits is not None:
        return (n * bits + 7) // 8
    try:
        return n * tensor_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _typed_count(data_type: int, n: int) -> int:
    """Entries of the typed field (int32_data, float_data, ...) holding ``n`` elements."""
    if data_type in _COMPLEX:
        return 2 * n  # real and imaginary parts
    if _PACKED_BITS.get(data_type) == 4:
        return (n + 1) // 2
    if _PACKED_BITS.get(data_type) == 2:
        return (n + 3) // 4
    return n  # 6-bit types keep one element per int32 entry


def _known_type(data_type: int) -> bool:
    """Whether ``data_type`` is an ONNX element type this onnx knows (UNDEFINED is not)."""
    return data_type == TensorProto.STRING or tensor_nbytes(data_type, ()) is not None


def _check_payload(t: TensorProto, path: str) -> None:
    """Refuse an embedded tensor whose data does not fill its declared shape.

    Only counts are compared (nothing is allocated), so a tensor that claims 10^12 elements
    over a few bytes is refused before any reader trusts its shape.
    """
    if any(d < 0 for d in t.dims):
        raise InvalidModelError(f"{path}: tensor {t.name!r} has a negative dimension "
                                f"{list(t.dims)}")
    n = _element_count(t.dims)
    dt = t.data_type
    has_raw = t.HasField("raw_data")
    if dt == TensorProto.UNDEFINED:
        if has_raw or n:
            raise InvalidModelError(f"{path}: tensor {t.name!r} has no data type")
        return
    if not _known_type(dt):
        raise InvalidModelError(f"{path}: tensor {t.name!r} has unknown data type {dt}")
    if has_raw:
        if dt == TensorProto.STRING:
            raise InvalidModelError(f"{path}: string tensor {t.name!r} stores raw bytes")
        expected, got = tensor_nbytes(dt, t.dims), len(t.raw_data)
    else:
        got = len(getattr(t, onnx.helper.tensor_dtype_to_field(dt)))
        expected = _typed_count(dt, n)
    if got != expected:
        raise InvalidModelError(
            f"{path}: tensor {t.name!r} has {got} {'bytes' if has_raw else 'values'} of data but "
            f"its shape {list(t.dims)} needs {expected}")


def _iter_all_sparse(model: ModelProto) -> Iterator[SparseTensorProto]:
    """Every SparseTensorProto: sparse initializers and attributes, in subgraphs and functions."""
    stack = [model.graph, *_training_graphs(model)]
    nodes = [n for fn in model.functions for n in fn.node]
    while stack or nodes:
        if stack:
            g = stack.pop()
            yield from g.sparse_initializer
            nodes.extend(g.node)
            continue
        node = nodes.pop()
        for a in node.attribute:
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor
            yield from a.sparse_tensors
        stack.extend(node_subgraphs(node))


def _all_graphs(model: ModelProto) -> Iterator[GraphProto]:
    for top in (model.graph, *_training_graphs(model)):
        yield from proto_graphs(top)


def node_subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    """The graphs held by ``node``'s attributes (If branches, Loop/Scan bodies), in attribute
    order; the one place that knows where a node keeps its subgraphs."""
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def proto_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """``graph`` and every subgraph of its nodes (If/Loop/Scan bodies), outer before inner."""
    return (g for g, _ in scoped_graphs(graph))


def node_label(node: NodeProto, index: int) -> str:
    """A node's name, or ``OpType_index`` for unnamed nodes (names are optional in ONNX)."""
    return node.name or f"{node.op_type}_{index}"


def scoped_graphs(graph: GraphProto) -> Iterator[tuple[GraphProto, str]]:
    """(graph, label prefix) for ``graph`` (prefix "") and every subgraph (If branches, Loop/Scan
    bodies), outer before inner, without recursion.  A subgraph's prefix is ``"<node
    label>/<attribute>/"`` of the node holding it, after its own graph's prefix: the names the
    fine-tune bridge gives branch nodes."""
    queue = collections.deque([(graph, "")])
    while queue:
        g, prefix = queue.popleft()
        yield g, prefix
        for i, node in enumerate(g.node):
            for a in node.attribute:
                subs = [a.g] if a.HasField("g") else list(a.graphs)
                queue.extend((sub, f"{prefix}{node_label(node, i)}/{a.name}/") for sub in subs)


def _check_text(model: ModelProto, path: str) -> None:
    """Refuse names that are not UTF-8 (the protobuf parser hands them over as bytes)."""
    def texts():
        yield from (model.producer_name, model.domain)
        for op in model.opset_import:
            yield op.domain
        for p in model.metadata_props:
            yield from (p.key, p.value)
        nodes = [n for fn in model.functions for n in fn.node]
        for fn in model.functions:
            yield from (fn.name, fn.domain, *fn.input, *fn.output)
        for g in _all_graphs(model):
            yield g.name
            for vi in (*g.input, *g.output, *g.value_info):
                yield vi.name
            for t in (*g.initializer, *(sp.values for sp in g.sparse_initializer)):
                yield t.name
                for e in t.external_data:
                    yield from (e.key, e.value)
            nodes.extend(g.node)
        for n in nodes:
            yield from (n.name, n.op_type, n.domain, *n.input, *n.output)
            for a in n.attribute:
                yield a.name

    for text in texts():
        if not isinstance(text, str):
            raise InvalidModelError(f"{path}: a name in the model is not valid UTF-8: {text[:40]!r}")


def _node_label(node, index: int) -> str:
    return repr(node.name) if node.name else f"#{index} ({node.op_type})"


def _scopes(graph: GraphProto) -> tuple[list[GraphProto], list[list[list[int]]]]:
    """``graph`` and its subgraphs, each listed before its own subgraphs, and for each graph
    and node the positions (in that list) of the node's subgraphs."""
    order: list[GraphProto] = [graph]
    children: list[list[list[int]]] = []
    k = 0
    while k < len(order):
        per_node = []
        for node in order[k].node:
            subs = list(node_subgraphs(node))
            per_node.append(list(range(len(order), len(order) + len(subs))))
            order.extend(subs)
        children.append(per_node)
        k += 1
    return order, children


def _check_scope(g: GraphProto, sub_reads: list[list[set[str]]], path: str) -> set[str]:
    """Check one graph; ``sub_reads[i]`` are the outer-scope reads of node i's subgraphs.
    Returns the outer-scope names ``g`` itself reads.

    Within a graph every name is defined once: an initializer (dense or sparse) appears once,
    a node output is written by one node and is neither an initializer nor a graph input
    (an initializer may also be a graph input: IR < 4 requires it).  The nodes, with each
    node's subgraphs reading outer-scope names as extra inputs, must form no cycle (their order
    in the file need not be topological).  A subgraph may reuse an outer name (it shadows it).
    """
    where = f"graph {g.name!r}"
    inits: set[str] = set()
    for name in (*(t.name for t in g.initializer), *(sp.values.name for sp in g.sparse_initializer)):
        if name in inits:
            raise InvalidModelError(f"{path}: initializer {name!r} is defined twice in {where}")
        inits.add(name)
    inputs = {vi.name for vi in g.input}
    producer: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                first = producer[out]
                raise InvalidModelError(
                    f"{path}: tensor {out!r} is written by two nodes "
                    f"({_node_label(g.node[first], first)} and {_node_label(node, i)}) in {where}")
            if out in inits or out in inputs:
                raise InvalidModelError(
                    f"{path}: tensor {out!r} is written by node {_node_label(node, i)} but is "
                    f"also {'an initializer' if out in inits else 'a graph input'} of {where}")
            producer[out] = i
    # Kahn's algorithm: a node is ready once every producer it reads from has run.
    readers: list[list[int]] = [[] for _ in g.node]
    waiting = [0] * len(g.node)
    used: set[str] = set()
    for i, node in enumerate(g.node):
        reads = {n for n in node.input if n}
        for sub in sub_reads[i]:
            reads |= sub
        used |= reads
        for name in reads:
            j = producer.get(name)
            if j is not None:
                readers[j].append(i)
                waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        j = ready.pop()
        done += 1
        for i in readers[j]:
            waiting[i] -= 1
            if waiting[i] == 0:
                ready.append(i)
    if done != len(g.node):
        i = next(i for i, w in enumerate(waiting) if w)
        raise InvalidModelError(f"{path}: {where} has a cycle through node "
                                f"{_node_label(g.node[i], i)}; no runtime can order its nodes")
    return used - inits - inputs - producer.keys()


def check_graph(model: ModelProto, path: str) -> None:
    """Refuse a main graph (or subgraph) that no runtime loads: see ``_check_scope``.

    Subgraphs are checked before the graphs holding them, so a node's reads include the
    outer-scope names its subgraphs read.  Linear in the number of node inputs and outputs.
    """
    order, children = _scopes(model.graph)
    reads: list[set[str]] = [set()] * len(order)
    for k in reversed(range(len(order))):  # every subgraph before the graph holding it
        sub_reads = [[reads[c] for c in per_node] for per_node in children[k]]
        reads[k] = _check_scope(order[k], sub_reads, path)
    _check_outer_names(order, children, reads, path)


def _check_outer_names(order: list[GraphProto], children, reads: list[set[str]],
                       path: str) -> None:
    """Refuse a subgraph node output that reuses a name defined before the node holding the
    subgraph: an enclosing graph's input or initializer, or an output of a node that comes
    earlier in the file or that the holder depends on (onnx.checker and ONNX Runtime require
    single assignment across scopes, in that order).  Names of the holder itself and of later
    nodes it does not depend on stay allowed, as both accept them.

    ``order``/``children`` as from ``_scopes`` (parents first); ``reads[c]`` are the outer
    names subgraph ``c`` reads (its holder depends on their producers).  The walk over a
    holder's dependencies runs once per node that has subgraphs.
    """
    visible: list[frozenset[str]] = [frozenset()] * len(order)
    for k, g in enumerate(order):
        if k:
            for i, node in enumerate(g.node):
                clash = next((o for o in node.output if o and o in visible[k]), None)
                if clash is not None:
                    raise InvalidModelError(
                        f"{path}: tensor {clash!r} is written by node {_node_label(node, i)} "
                        f"in graph {g.name!r} but is already defined in an enclosing graph")
        holders = [i for i, subs in enumerate(children[k]) if subs]
        if not holders:
            continue
        base = visible[k] | {vi.name for vi in g.input} | {t.name for t in g.initializer} | {
            sp.values.name for sp in g.sparse_initializer}
        producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}

        def inputs_of(i: int) -> set[str]:
            names = {n for n in g.node[i].input if n}
            for c in children[k][i]:
                names |= reads[c]
            return names

        for i in holders:
            seen, stack, names = {i}, [i], set(base)
            names.update(o for n in g.node[:i] for o in n.output if o)
            while stack:
                for name in inputs_of(stack.pop()):
                    j = producer.get(name)
                    if j is not None and j not in seen:
                        seen.add(j)
                        stack.append(j)
                        names.update(o for o in g.node[j].output if o)
            for c in children[k][i]:
                visible[c] = frozenset(names)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def load(path: str | os.PathLike, *, lazy: bool = False) -> tuple[ModelProto, LoadInfo]:
    """Read and validate a model.

    External data is validated (location, bounds, size) and, unless ``lazy``, read into the
    tensors.  With ``lazy=True`` top-level initializers stay external references and their
    values are read through ``LoadInfo.array`` (a read-only memory map): a 500 MB model is not
    copied into memory to be pruned.

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
        raise InvalidModelError(f"{path}: not an ONNX model (protobuf parse failed: malformed, "
                                "truncated or nested too deeply)") from None
    del blob
    _validate_header(model, path)
    _check_text(model, path)
    check_graph(model, path)
    base_dir = os.path.dirname(os.path.abspath(path))
    data_files: list[str] = []
    sizes: dict[str, int] = {}
    external: dict[str, ExternalRef] = {}
    n_top = len(model.graph.initializer) if lazy else 0
    # Every external tensor is validated and read here, against the model's own folder; only
    # top-level initializers of whole-byte types stay external when lazy (their names are
    # unique: check_graph refused duplicates).  Nothing is left for another library to read
    # relative to the working folder.
    for k, t in enumerate(_iter_all_tensors(model)):
        if not _is_external(t):
            continue
        ref = _validate_external(t, base_dir, sizes)
        if ref.path not in data_files:
            data_files.append(ref.path)
        if k < n_top and t.data_type not in _PACKED_BITS:
            external[t.name] = ref
        else:
            _embed(t, _read_ref(ref))
    for t in _iter_all_tensors(model):
        if not _is_external(t):
            _check_payload(t, path)
    dense_bytes = 0
    for sp in _iter_all_sparse(model):
        dense_bytes += validate_sparse(sp)  # indices checked before anything trusts them
    if dense_bytes > _physical_memory():
        raise InvalidModelError(
            f"{path}: its sparse tensors need {dense_bytes / 1e9:.3g} GB once densified, more "
            "than this machine's memory")
    total = size + sum(sizes.values())
    return model, LoadInfo(path=os.path.abspath(path), data_files=tuple(data_files),
                           file_bytes=total, external=external)


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


# --------------------------------------------------------------------------- portable sparse


def tensor_dtype(data_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


FLOAT_TENSOR_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                      TensorProto.DOUBLE)


# A sparse tensor is written only when it saves at least this share of the dense bytes: ONNX
# Runtime densifies sparse initializers at load, so a marginal saving on disk is not worth the
# load-time cost (int64 indices make fp32 break even at 33% density).
SPARSE_MIN_SAVING = 0.10


def sparse_nbytes(nnz: int, itemsize: int) -> int:
    """Bytes a SparseTensorProto with 1-D int64 linear indices needs for its payload."""
    return nnz * (itemsize + 8)


# Bytes a SparseTensorProto adds over a dense TensorProto whatever its payload: a second
# tensor (indices) with its type and dims, the values' dims, the sparse dims.  Without it a
# one-element zero tensor "saves" its 4 bytes and grows.
SPARSE_OVERHEAD_BYTES = 32


def _sparse_parts(arr: np.ndarray, extra_bytes: int = 0
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, sorted int64 linear indices) of ``arr`` if a sparse tensor is smaller, else None:
    payload plus ``SPARSE_OVERHEAD_BYTES`` plus ``extra_bytes`` (what else the sparse form
    adds, e.g. a name the dense one lacks) must save ``SPARSE_MIN_SAVING`` of the dense bytes."""
    from onnxprune.core.masks import count_nonzero

    if arr.size == 0:
        return None
    nnz = count_nonzero(arr)
    sparse = sparse_nbytes(nnz, arr.dtype.itemsize) + SPARSE_OVERHEAD_BYTES + extra_bytes
    if sparse > (1 - SPARSE_MIN_SAVING) * arr.size * arr.dtype.itemsize:
        return None
    flat = np.asarray(arr).reshape(-1)
    nz = np.flatnonzero(flat if flat.dtype.kind == "f" and flat.dtype.itemsize >= 4
                        else flat.astype(np.float32))
    return np.ascontiguousarray(flat[nz]), nz.astype(np.int64, copy=False)


def _fill_sparse(sp: SparseTensorProto, name: str, data_type: int, dims, values, indices) -> None:
    # Filled in place: building TensorProtos and appending them would copy the payload twice.
    sp.dims.extend(int(d) for d in dims)
    sp.values.name = name
    sp.values.data_type = data_type
    sp.values.dims.append(values.size)
    sp.values.raw_data = values.tobytes()
    sp.indices.data_type = TensorProto.INT64
    sp.indices.dims.append(indices.size)
    sp.indices.raw_data = indices.astype("<i8", copy=False).tobytes()


# Constant's ``sparse_value`` attribute exists from opset 11.
CONSTANT_SPARSE_OPSET = 11


def _default_opset(model: ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _sparse_constants(model: ModelProto, protected: set[str]) -> list[str]:
    """Give Constant nodes holding a float weight a ``sparse_value`` instead of ``value``
    where that saves ``SPARSE_MIN_SAVING`` (same rule and index form as initializers).

    Every graph is visited, subgraphs included.  Returns the output names converted.
    """
    if _default_opset(model) < CONSTANT_SPARSE_OPSET:
        return []
    converted = []
    for g in proto_graphs(model.graph):
        for node in g.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or \
                    len(node.attribute) != 1 or len(node.output) != 1:
                continue
            a = node.attribute[0]
            if a.name != "value" or not a.HasField("t") or node.output[0] in protected:
                continue
            t = a.t
            if t.data_type not in FLOAT_TENSOR_TYPES or len(t.dims) < 1 or _is_external(t):
                continue
            name = t.name or node.output[0]  # the sparse values carry a name; `value` may not
            parts = _sparse_parts(onnx.numpy_helper.to_array(t),
                                  extra_bytes=0 if t.name else len(name.encode()))
            if parts is None:
                continue
            data_type, dims = t.data_type, list(t.dims)
            del node.attribute[:]
            attr = node.attribute.add()
            attr.name, attr.type = "sparse_value", AttributeProto.SPARSE_TENSOR
            _fill_sparse(attr.sparse_tensor, name, data_type, dims, *parts)
            converted.append(node.output[0])
    return converted


def to_portable_sparse(model: ModelProto, *, protected: set[str] | None = None,
                       arrays: dict[int, np.ndarray] | None = None) -> list[str]:
    """Rewrite float initializers (and weights in Constant nodes, see ``_sparse_constants``)
    as ``SparseTensorProto`` where that is smaller.

    Indices are 1-D int64 linear positions in row-major order, sorted ascending.  Initializers
    that are also graph inputs (a user may override them) and names in ``protected`` stay dense.
    ``arrays`` gives the values of initializers (by position) whose bytes are not in the proto.
    Returns the names converted.  Modifies ``model`` in place.
    """
    protected = set(protected or ())
    arrays = arrays or {}
    graph_inputs = {i.name for i in model.graph.input}
    converted: list[str] = _sparse_constants(model, protected)
    drop: set[int] = set()
    for i, init in enumerate(model.graph.initializer):
        if (init.name in graph_inputs or init.name in protected
                or init.data_type not in FLOAT_TENSOR_TYPES or len(init.dims) < 1):
            continue
        arr = arrays.get(i)
        if arr is None:
            if _is_external(init):
                continue
            arr = onnx.numpy_helper.to_array(init)
        parts = _sparse_parts(arr)
        if parts is None:
            continue
        _fill_sparse(model.graph.sparse_initializer.add(), init.name, init.data_type, init.dims,
                     *parts)
        del parts
        converted.append(init.name)
        drop.add(i)
    if drop:
        keep = [t for i, t in enumerate(model.graph.initializer) if i not in drop]
        kept_arrays = {}
        j = 0
        for i in range(len(model.graph.initializer)):
            if i in drop:
                continue
            if i in arrays:
                kept_arrays[j] = arrays[i]
            j += 1
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        arrays.clear()
        arrays.update(kept_arrays)
    return converted


def _sparse_linear_indices(sp: SparseTensorProto) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """(dims, values, int64 linear indices) of a SparseTensorProto, validated; no dense array.

    Raises ``InvalidModelError`` for indices that are not integers, out of range, unsorted or
    duplicated, or a values/indices count mismatch — ONNX requires sorted, unique indices.
    """
    name = sp.values.name or "<sparse>"
    dims = tuple(int(d) for d in sp.dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"sparse tensor {name!r}: negative dimension in {list(dims)}")
    size = 1
    for d in dims:
        size *= d
    if size > 1 << 34:
        raise InvalidModelError(f"sparse tensor {name!r}: declared shape {list(dims)} is too large")
    for part, t in (("values", sp.values), ("indices", sp.indices)):
        if _is_external(t):
            raise InvalidModelError(f"sparse tensor {name!r}: external {part} were not loaded")
        _check_payload(t, f"sparse tensor {name!r} {part}")
    try:
        values = onnx.numpy_helper.to_array(sp.values).reshape(-1)
        indices = onnx.numpy_helper.to_array(sp.indices)
    except Exception as e:
        raise InvalidModelError(f"sparse tensor {name!r}: unreadable payload ({e})") from None
    if indices.dtype.kind not in "iu":
        raise InvalidModelError(f"sparse tensor {name!r}: indices must be integers, "
                                f"got {indices.dtype}")
    nnz = values.size
    if indices.ndim == 2 and indices.shape == (nnz, len(dims)) and len(dims) > 0:
        if np.any(indices < 0) or np.any(indices >= np.array(dims)):
            raise InvalidModelError(f"sparse tensor {name!r}: index out of range")
        linear = np.ravel_multi_index(tuple(indices.T.astype(np.int64)), dims) if nnz else \
            np.zeros(0, np.int64)
    elif indices.ndim == 1 and indices.size == nnz:
        if indices.dtype == np.uint64 and nnz and int(indices.max()) >= size:
            raise InvalidModelError(f"sparse tensor {name!r}: index out of range [0, {size})")
        linear = indices.astype(np.int64)
        if nnz and (linear.min() < 0 or linear.max() >= size):
            raise InvalidModelError(f"sparse tensor {name!r}: index out of range [0, {size})")
    else:
        raise InvalidModelError(f"sparse tensor {name!r}: indices of shape {list(indices.shape)} "
                                f"do not match {nnz} values of a rank-{len(dims)} tensor")
    if nnz > 1 and np.any(np.diff(linear) <= 0):
        raise InvalidModelError(f"sparse tensor {name!r}: indices are not sorted and unique")
    return dims, values, linear


def validate_sparse(sp: SparseTensorProto) -> int:
    """Validate a SparseTensorProto (see ``sparse_to_dense``); returns its dense size in bytes."""
    dims, values, _ = _sparse_linear_indices(sp)
    n = 1
    for d in dims:
        n *= d
    return n * values.dtype.itemsize


def sparse_to_dense(sp: SparseTensorProto) -> np.ndarray:
    """Dense values of a SparseTensorProto (1-D linear or [nnz, rank] indices), validated.

    Raises ``InvalidModelError`` for indices that are not integers, out of range, unsorted or
    duplicated, or a values/indices count mismatch — ONNX requires sorted, unique indices.
    """
    dims, values, linear = _sparse_linear_indices(sp)
    size = 1
    for d in dims:
        size *= d
    dense = np.zeros(size, dtype=values.dtype)
    dense[linear] = values
    return dense.reshape(dims)


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
                if (os.path.exists(candidate) and _same_file(candidate, p)) or (
                        os.path.abspath(candidate) == os.path.abspath(p)):
                    raise UsageError(
                        f"refusing to overwrite the input ({p}); choose another -o or pass "
                        "--in-place"
                    )
    return data_path


def _tensor_raw_bytes(t: TensorProto) -> int:
    if _is_external(t):
        for e in t.external_data:
            if e.key == "length":
                return int(e.value)
        return 0
    if t.HasField("raw_data"):
        n = tensor_nbytes(t.data_type, t.dims)
        return n if n is not None else len(t.raw_data)
    return t.ByteSize()


def model_payload_bytes(model: ModelProto) -> int:
    return sum(_tensor_raw_bytes(t) for t in _iter_all_tensors(model))


def _as_bytes_view(arr: np.ndarray) -> memoryview:
    arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))


def data_file_name(model_path: str, sha256_hex: str) -> str:
    """``<model>.<first 16 hex digits of the data's sha256>.data`` beside the model."""
    return f"{model_path}.{sha256_hex[:16]}.data"


def _previous_data_files(path: str) -> list[str]:
    """Data files an existing model at ``path`` uses that this tool would have written.

    Only files named like ours (``<model>.data`` or ``<model>.<hex>.data``) in the same folder
    are returned: a file another model may share is never deleted.
    """
    if not os.path.isfile(path) or os.path.getsize(path) > PROTOBUF_LIMIT:
        return []
    old = ModelProto()
    try:
        with open(path, "rb") as f:
            old.ParseFromString(f.read())
    except (OSError, DecodeError, RuntimeError, ValueError):
        return []
    base = os.path.basename(path)
    folder = os.path.dirname(os.path.abspath(path))
    found = []
    for t in _iter_all_tensors(old):
        if not _is_external(t):
            continue
        loc = _external_info(t).get("location", "")
        if "/" in loc or "\\" in loc or not loc.startswith(base + ".") or not loc.endswith(".data"):
            continue
        middle = loc[len(base) + 1:-len(".data")]
        if middle and not all(c in "0123456789abcdef" for c in middle):
            continue
        full = os.path.join(folder, loc)
        if full not in found and os.path.isfile(full) and not os.path.islink(full):
            found.append(full)
    return found


def _unreferenced(files: list[str], folder: str, exclude: str) -> list[str]:
    """Those of ``files`` that no model in ``folder`` (other than ``exclude``) names.

    A model is any file whose name contains ``.onnx`` in any case (``B.ONNX``, a copy kept as
    ``a.onnx.bak``) and does not end in ``.data``.  A model refers to a data file by its
    location string, which protobuf stores verbatim: a byte search of each model for the file's
    name finds every reference (and, at worst, a coincidence, which only keeps a file).  A model
    that cannot be read keeps them all.
    """
    import mmap

    if not files:
        return []
    keep: set[str] = set()
    names = {f: os.path.basename(f).encode() for f in files}
    try:
        entries = [e for e in os.scandir(folder)
                   if ".onnx" in e.name.lower() and not e.name.endswith(".data")]
    except OSError:
        return []
    for entry in entries:
        full = os.path.join(folder, entry.name)
        if _same_file(full, exclude) or not entry.is_file():
            continue
        try:
            with open(full, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    continue
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    keep.update(p for p, name in names.items() if m.find(name) >= 0)
        except (OSError, ValueError):
            return []
    return [f for f in files if f not in keep]


class _DataSink:
    """Appends tensor payloads to an open external-data file, each at an offset that is a
    multiple of ``EXTERNAL_ALIGN`` (zero padding between), hashing every byte written, and turns
    each tensor into a reference to its bytes.  The location is "pending" until the file is
    named after its content (``_name_data_file``)."""

    def __init__(self, f):
        import hashlib

        self.f = f
        self.hash = hashlib.sha256()
        self.offset = 0
        self.placed: list[TensorProto] = []

    def _emit(self, data) -> None:
        self.f.write(data)
        self.hash.update(data)

    def put(self, t: TensorProto, data) -> None:
        pad = (-self.offset) % EXTERNAL_ALIGN
        if pad:
            self._emit(b"\0" * pad)
            self.offset += pad
        self._emit(data)
        n = len(data) if isinstance(data, (bytes, bytearray)) else data.nbytes
        t.ClearField("raw_data")
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "pending"), ("offset", str(self.offset)), ("length", str(n))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.placed.append(t)
        self.offset += n


def _fill_data_file(f, model: ModelProto, arrays: dict[int, np.ndarray], progress) -> _DataSink:
    """Move every payload of at least ``EXTERNAL_MIN_BYTES`` into ``f``, in file order:
    initializers (new values from ``arrays`` by position, smaller ones embedded), then the other
    tensors of the model; flushed and synced before returning."""
    sink = _DataSink(f)
    # Sparse payloads stay embedded when they fit: onnx.checker cannot read a
    # SparseTensorProto's external data (ONNX Runtime can), so embedding them keeps
    # the portable file checkable.
    sparse_bytes = sum(_tensor_raw_bytes(x) for sp in _iter_all_sparse(model)
                       for x in (sp.values, sp.indices))
    embed_sparse = sparse_bytes < EMBED_LIMIT_BYTES // 2
    n_init = len(model.graph.initializer)
    for i, t in enumerate(model.graph.initializer):
        if progress is not None:
            progress("writing", i + 1, n_init, t.name)
        if i in arrays:
            arr = arrays[i]
            if arr.nbytes >= EXTERNAL_MIN_BYTES:
                sink.put(t, _as_bytes_view(arr))
            else:
                _embed(t, np.ascontiguousarray(arr).tobytes())
        elif t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES:
            sink.put(t, t.raw_data)
    for k, t in enumerate(_iter_all_tensors(model, skip_sparse=embed_sparse)):
        if k < n_init:
            continue  # initializers were handled above
        if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES:
            sink.put(t, t.raw_data)
    f.flush()
    os.fsync(f.fileno())
    return sink


def _name_data_file(sink: _DataSink, path: str) -> str:
    """The data file is named after its content: the new model never points at a file the
    previous output still uses, so the single rename of the model switches outputs atomically
    (a crash between the two renames leaves the old model with its own, untouched, data).
    Same content -> same name, so outputs stay reproducible."""
    data_path = data_file_name(path, sink.hash.hexdigest())
    for t in sink.placed:
        for e in t.external_data:
            if e.key == "location":
                e.value = os.path.basename(data_path)
    return data_path


def _serialise(model: ModelProto) -> bytes:
    blob = model.SerializeToString(deterministic=True)
    if len(blob) > PROTOBUF_LIMIT:
        raise RuntimeFailure("the model is over protobuf's 2 GiB limit; save it with external data")
    return blob


def _write_synced(fd: int, blob: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _place_data_file(tmp_data: str, data_path: str, protect: tuple[str, ...]) -> None:
    os.chmod(tmp_data, 0o644)
    if os.path.exists(data_path) and any(
            os.path.samefile(data_path, p) for p in protect if os.path.exists(p)):
        os.unlink(tmp_data)  # identical bytes already there, and they are the input's
    else:
        os.replace(tmp_data, data_path)


def _drop_previous_data(previous: list[str], data_path: str, path: str,
                        protect: tuple[str, ...]) -> None:
    """The previous output's data files are no longer referenced by the model just written;
    each goes only if no other model beside it refers to it either (and never a protected one)."""
    doomed = [old for old in previous if old != os.path.abspath(data_path) and not any(
        os.path.abspath(p) == old for p in protect)]
    for old in _unreferenced(doomed, os.path.dirname(os.path.abspath(path)), exclude=path):
        try:
            os.unlink(old)
        except OSError:
            pass


def _write(model: ModelProto, path: str, data_path: str, external: bool,
           arrays: dict[int, np.ndarray], records: list | None = None,
           progress=None, protect: tuple[str, ...] = ()) -> list[str]:
    """Serialise ``model`` with initializer payloads from ``arrays`` (by position) atomically.

    External layout: tensors in file order, 64-byte aligned.  ``model`` may be modified
    (payloads embedded or turned into references); callers pass a model they own.  When
    ``records`` is a list, {path, bytes, sha256} of each file written is appended to it (hashed
    while writing, so the output is not read back).
    """
    import hashlib

    folder = os.path.dirname(os.path.abspath(path))
    written: list[str] = []
    tmp_model = tmp_data = None
    try:
        if external:
            fd, tmp_data = tempfile.mkstemp(prefix=".onnxprune-", suffix=".data.tmp", dir=folder)
            with os.fdopen(fd, "wb") as f:
                sink = _fill_data_file(f, model, arrays, progress)
            if not sink.placed:  # every tensor stayed embedded: no data file at all
                os.unlink(tmp_data)
                tmp_data = None
                external = False
            data_path = _name_data_file(sink, path)
        else:
            for i, t in enumerate(model.graph.initializer):
                if i in arrays:
                    _embed(t, np.ascontiguousarray(arrays[i]).tobytes())
        blob = _serialise(model)
        fd, tmp_model = tempfile.mkstemp(prefix=".onnxprune-", suffix=".onnx.tmp", dir=folder)
        _write_synced(fd, blob)
        model_record = {"path": path, "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest()}
        del blob
        previous = _previous_data_files(path)
        if tmp_data is not None:
            _place_data_file(tmp_data, data_path, protect)
            tmp_data = None
            written.append(data_path)
        os.chmod(tmp_model, 0o644)
        os.replace(tmp_model, path)
        tmp_model = None
        written.insert(0, path)
        _drop_previous_data(previous, data_path, path, protect)
        if records is not None:
            records.append(model_record)
            if external:
                records.append({"path": data_path, "bytes": sink.offset,
                                "sha256": sink.hash.hexdigest()})
    except OSError as e:
        raise RuntimeFailure(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for tmp in (tmp_model, tmp_data):
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return written


def _decide_external(payload: int, source: LoadInfo | None, external_data: bool | None) -> bool:
    if external_data is not None:
        return external_data
    return bool(source and source.data_files) or payload > EMBED_LIMIT_BYTES


def _check_storage(storage: str) -> None:
    if storage not in STORAGE_FORMS:
        raise UsageError(f"unknown storage form {storage!r}; expected one of {STORAGE_FORMS}")


def save(
    model: ModelProto,
    path: str | os.PathLike,
    *,
    source: LoadInfo | None = None,
    in_place: bool = False,
    external_data: bool | None = None,
) -> list[str]:
    """Write ``model`` atomically (dense storage); returns the files written (model first).

    ``model`` is not modified.  Initializers still referring to the source's external data
    (``load(..., lazy=True)``) are copied from there.  ``external_data=None`` chooses: external
    when the input used it or the model would not fit one protobuf.
    """
    return save_with_storage(model, path, source=source, in_place=in_place,
                             external_data=external_data)[0]


def save_with_storage(model: ModelProto, path: str | os.PathLike, *, storage: str = "dense",
                      source: LoadInfo | None = None, in_place: bool = False,
                      external_data: bool | None = None,
                      records: list | None = None) -> tuple[list[str], list[str]]:
    """``save`` with a storage form; returns (files written, names stored sparse)."""
    _check_storage(storage)
    path = os.fspath(path)
    data_path = check_output_path(path, source, in_place=in_place)
    out = ModelProto()
    out.CopyFrom(model)
    arrays: dict[int, np.ndarray] = {}
    for i, t in enumerate(out.graph.initializer):
        if _is_external(t):
            ref = source.ref_of(t) if source is not None else None
            if ref is None:
                raise RuntimeFailure(f"tensor {t.name!r} refers to external data that was not "
                                     "loaded; load the model without lazy=True")
            arrays[i] = source.array_of(ref)
    sparse = to_portable_sparse(out, arrays=arrays) if storage == "portable" else []
    payload = model_payload_bytes(out) + sum(a.nbytes for a in arrays.values())
    external = _decide_external(payload, source, external_data)
    protect = (source.path, *source.data_files) if source is not None and not in_place else ()
    return _write(out, path, data_path, external, arrays, records, protect=protect), sparse


def write_exported(model: ModelProto, arrays: dict, path: str | os.PathLike, *,
                   storage: str = "dense", source: LoadInfo | None = None, in_place: bool = False,
                   external_data: bool | None = None, records: list | None = None,
                   progress=None) -> tuple[list[str], list[str]]:
    """Write a model exported with placeholders (``graph.export_with_placeholders``): the
    ``arrays`` (by initializer index; numpy arrays or memory maps) are streamed straight into
    the output, never copied into TensorProtos.  Returns (files written, names stored sparse).
    """
    _check_storage(storage)
    path = os.fspath(path)
    data_path = check_output_path(path, source, in_place=in_place)
    sparse = to_portable_sparse(model, arrays=arrays) if storage == "portable" else []
    payload = model_payload_bytes(model) + sum(a.nbytes for a in arrays.values())
    external = _decide_external(payload, source, external_data)
    protect = (source.path, *source.data_files) if source is not None and not in_place else ()
    return _write(model, path, data_path, external, arrays, records, progress,
                  protect=protect), sparse


def serialize_for_runtime(model: ModelProto) -> bytes:
    """Bytes to hand to ``onnxruntime.InferenceSession`` (models under 2 GiB)."""
    return model.SerializeToString(deterministic=True)


def dim_size(d) -> int | None:
    """A ``TensorShapeProto.Dimension``'s fixed size, or None when it is free: symbolic, absent,
    or a dim_value <= 0 (Paddle exports write -1 for the batch), as ONNX Runtime reads it."""
    return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
