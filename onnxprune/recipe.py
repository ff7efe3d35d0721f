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
from typing import Any

import yaml

from onnxprune.errors import UsageError
from onnxprune.passes import REGISTRY
from onnxprune.passes.base import check_float, check_optional, parse_options, Option

MAX_RECIPE_BYTES = 1_000_000

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
        """The io storage form the emit form needs (sparse-ops graphs are stored dense)."""
        return "portable" if self.emit == "portable" else "dense"

    @property
    def sha256(self) -> str:
        canon = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def build_passes(self) -> list:
        return [REGISTRY[name](opts) for name, opts in self.effective_passes]

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
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    version = data.get("version", 1)
    if version != 1:
        raise UsageError(f"{source}: unsupported recipe version {version!r} (expected 1)")
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
            raise UsageError(f"{source}: unknown pass {name!r}; known: {', '.join(sorted(REGISTRY))}")
        opts = {} if opts is None else opts
        parse_options(name, REGISTRY[name].OPTIONS, opts)  # validate now, fail before work
        passes.append((name, dict(opts)))
    emit = data.get("emit", "portable")
    if emit not in EMIT_FORMS:
        raise UsageError(f"{source}: emit must be one of {', '.join(EMIT_FORMS)}, got {emit!r}")
    gates = parse_options("gates", GATE_OPTIONS, data.get("gates"))
    return Recipe(passes=passes, emit=emit, gates=gates)


def load_recipe(path: str) -> Recipe:
    try:
        size = os.path.getsize(path)
        if size > MAX_RECIPE_BYTES:
            raise UsageError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES} bytes")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read recipe: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path}: invalid YAML: {msg}") from None
    return parse_recipe(data, path)
