"""Recipes: which passes run, with which options, how the result is stored, which gates apply.

A recipe is YAML (read with ``yaml.safe_load``: no Python tags) with a strict schema::

    version: 1
    passes:                      # run in order; each entry is {pass-name: {options}}
      - threshold-by-std:
          quality: {conv: 0.6, fc: 1.2}
          layers: {"fc3*": 0.8}
          skip: ["conv1"]
      - adjust-dropout: {}
      - remove-dead-neurons: {}
    emit: portable               # dense | portable (sparse initializers where smaller) |
                                 # sparse-ops (lower-to-sparse-ops runs last; stored dense)
    gates:
      min-sparsity: 0.8          # share of prunable weights that must be zero
      max-size-mb: 2.0           # output files together, in 10^6 bytes

Unknown keys and bad values raise ``UsageError`` (exit 2).  ``Recipe.sha256`` hashes the
normalised passes and emit form (defaults filled in, gates excluded: gates judge the output, they
do not shape it), so two spellings of the same recipe hash alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from typing import Any

import yaml

from onnxprune.core.errors import UsageError, short_repr
from onnxprune.passes import REGISTRY
from onnxprune.passes.base import check_float, check_optional, parse_options, Option

MAX_RECIPE_BYTES = 1 << 20  # 1 MiB

GATE_OPTIONS = (
    Option("min-sparsity", check_optional(check_float(0.0, 1.0)), None,
           "fail (exit 3) when less than this share of prunable weights is zero"),
    Option("max-size-mb", check_optional(check_float(0.0)), None,
           "fail (exit 3) when the output files exceed this many 10^6 bytes"),
)

DEFAULT_PASSES = ("threshold-by-std", "adjust-dropout", "remove-dead-neurons")

# What the output file holds: dense initializers, portable sparse initializers where smaller,
# or pruned layers lowered to onnxprune's CSR ops (``ai.onnxprune``) where they run faster.
EMIT_FORMS = ("dense", "portable", "sparse-ops")
LOWERING_PASS = "lower-to-sparse-ops"


@dataclasses.dataclass
class Recipe:
    passes: list[tuple[str, dict]]
    emit: str = "portable"
    gates: dict = dataclasses.field(default_factory=lambda: parse_options("gates", GATE_OPTIONS, {}))

    @property
    def effective_passes(self) -> list[tuple[str, dict]]:
        """The passes that run: emit sparse-ops appends the lowering pass when it is missing.

        Lowering writes custom ops, so a recipe that lowers must say so with emit: sparse-ops.
        """
        names = [n for n, _ in self.passes]
        if LOWERING_PASS in names and self.emit != "sparse-ops":
            raise UsageError(f"the {LOWERING_PASS} pass writes ai.onnxprune ops; "
                             f"use emit: sparse-ops (got {self.emit})")
        if self.emit == "sparse-ops" and LOWERING_PASS not in names:
            return [*self.passes, (LOWERING_PASS, {})]
        return list(self.passes)

    def normalised(self) -> dict:
        passes = []
        for name, opts in self.effective_passes:
            cls = REGISTRY[name]
            passes.append({name: _jsonable(parse_options(name, cls.OPTIONS, opts))})
        return {"version": 1, "passes": passes, "emit": self.emit}

    @property
    def storage(self) -> str:
        """The io storage form the emit form needs: ``dense`` stores every weight dense; the
        others store a weight as a sparse initializer where that is smaller, so that the layers
        a sparse-ops file leaves dense (not pruned, or not faster lowered) take no more room
        than in the portable file (PP-OCRv3's recognizer: 9.70 MB written, 9.34 MB portable)."""
        return "dense" if self.emit == "dense" else "portable"

    @property
    def sha256(self) -> str:
        canon = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def build_passes(self) -> list:
        return [REGISTRY[name](opts) for name, opts in self.effective_passes]

    def find(self, capability: str) -> int | None:
        """Index in ``passes`` of the first pass whose class declares ``capability``."""
        for i, (name, _) in enumerate(self.passes):
            if getattr(REGISTRY.get(name), capability, False):
                return i
        return None

    def pass_options(self, name: str) -> dict | None:
        for n, opts in self.passes:
            if n == name:
                return opts
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def default_recipe() -> Recipe:
    return Recipe(passes=[(name, {}) for name in DEFAULT_PASSES])


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: top level must be a mapping")
    allowed = {"version", "passes", "emit", "gates"}
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {short_repr(', '.join(unknown))}; "
                         f"known: {', '.join(sorted(allowed))}")
    version = data.get("version", 1)
    if version != 1:
        raise UsageError(f"{source}: unsupported recipe version {short_repr(version)} (expected 1)")
    raw_passes = data.get("passes", [{n: {}} for n in DEFAULT_PASSES])
    if not isinstance(raw_passes, list):
        raise UsageError(f"{source}: passes must be a list of {{pass-name: options}} entries")
    passes: list[tuple[str, dict]] = []
    for entry in raw_passes:
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UsageError(f"{source}: each pass entry must be one mapping {{pass-name: options}}")
        (name, opts), = entry.items()
        if name not in REGISTRY:
            raise UsageError(f"{source}: unknown pass {short_repr(name)}; known: {', '.join(sorted(REGISTRY))}")
        opts = {} if opts is None else opts
        parse_options(name, REGISTRY[name].OPTIONS, opts)  # validate now, fail before work
        passes.append((name, dict(opts)))
    emit = data.get("emit", "portable")
    if emit not in EMIT_FORMS:
        raise UsageError(f"{source}: emit must be one of {', '.join(EMIT_FORMS)}, got {short_repr(emit)}")
    gates = parse_options("gates", GATE_OPTIONS, data.get("gates"))
    return Recipe(passes=passes, emit=emit, gates=gates)


def read_small_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is a UsageError.

    Opened without blocking (a FIFO would wait for a writer) and checked with fstat on the
    open descriptor, so a device, FIFO or folder is refused before a byte is read, and the
    read is capped even if the file grows meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: {what} is not a regular file")
        if st.st_size > limit:
            raise UsageError(f"{path}: {what} is larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UsageError(f"{path}: {what} is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    finally:
        os.close(fd)


# A recipe is a few dozen nodes.  Aliases let a few hundred bytes name billions of nodes (each
# alias re-uses a whole subtree); the tree is measured before anything is built from it.
MAX_RECIPE_NODES = 10_000
# Integers past 2^53 lose precision as floats, and none of a recipe's counts come near it.
MAX_RECIPE_INT = 2**53


def _expanded_size(node, sizes: dict, path: set) -> int:
    """Nodes in the document with every alias expanded (plus one per KiB of scalar text),
    counted over the composed graph: an alias is the same node object, so each is measured
    once and the count costs the size of the file, not of the expansion.  A cycle counts as
    too large."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        return MAX_RECIPE_NODES + 1
    path.add(key)
    # A long scalar weighs as much as the nodes its text could have been.
    total = 1 + (len(node.value) // 1024 if isinstance(node, yaml.ScalarNode) else 0)
    if isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, path)
        if total > MAX_RECIPE_NODES:
            break
    path.discard(key)
    sizes[key] = total
    return total


def _safe_load_bounded(text: str, source: str):
    """``yaml.safe_load`` that refuses documents over MAX_RECIPE_NODES expanded nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_RECIPE_NODES:
            raise UsageError(f"{source}: recipe expands to more than {MAX_RECIPE_NODES} YAML "
                             "nodes (aliases); write it out plainly")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_ints(data, source: str) -> None:
    """Refuse integers no option can use (the float conversion of 10^400 overflows)."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_RECIPE_INT:
            raise UsageError(f"{source}: integer {short_repr(v, 40)} is too large "
                             f"(at most 2^53 in magnitude)")


def load_recipe(path: str) -> Recipe:
    """Read, bound and validate a recipe file (every failure is a UsageError, exit 2)."""
    raw = read_small_file(path, MAX_RECIPE_BYTES, "recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: recipe is not UTF-8 text") from None
    try:
        data = _safe_load_bounded(text, path)
    except yaml.YAMLError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path}: invalid YAML: {msg}") from None
    except RecursionError:
        raise UsageError(f"{path}: recipe is nested too deeply") from None
    _check_ints(data, path)
    return parse_recipe(data, path)
