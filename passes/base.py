"""The pass contract: what a pass declares, what it returns, and how its options are declared.

A pass is a ``Pass`` subclass; calling it, ``pass_(graph) -> PassResult``, runs the template

    requires(graph) → run(graph, progress) → ensures(graph, result)

so pre- and post-conditions are checked around every pass the same way.  A pass raises
(``PassError``) rather than logging and carrying on; it never reads or writes files.  What the
pipeline and the CLI need from a pass is declared (class attributes, the result's ``stamp``),
never inferred from its name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx_graphsurgeon as gs

from onnxprune.core.errors import OnnxPruneError, UsageError, short_repr


class PassError(OnnxPruneError):
    """A pass met a graph it cannot handle safely (runtime failure, exit 1)."""


@dataclasses.dataclass
class PassResult:
    """One pass's outcome.

    ``modified`` is true exactly when the graph changed (the serialized graph differs);
    ``stats`` goes into the report as it is; ``stamp`` maps a stamp key (``quality``,
    ``threshold``, …) to per-layer values the pipeline writes into the model's metadata.
    """

    graph: gs.Graph
    modified: bool
    stats: dict[str, Any]
    stamp: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class Pass:
    """Base of every pass: declarations, and the checked call around ``run``.

    Declarations (class attributes): ``name`` (the recipe key), ``OPTIONS`` (the option
    schema), ``in_place`` (the result's graph is the graph given, transformed), and the
    capabilities the CLI and the report use instead of names: ``takes_threshold_flags`` (the
    CLI's --quality/--layer/--skip/--target-sparsity… flags are options of this pass; its
    ``stats["layers"]`` rows carry quality, std, threshold and nonzero counts per layer),
    ``removes_neurons`` (--no-remove-dead-neurons drops it), ``lowers_weights`` (its
    ``stats["layers"]`` rows say which weights became CSR arrays; the batch/threads/objective
    flags are its options) and ``report_section`` (the report key its stats also appear under).
    """

    name: str = ""
    OPTIONS: tuple[Option, ...] = ()
    in_place: bool = True
    takes_threshold_flags: bool = False
    removes_neurons: bool = False
    lowers_weights: bool = False
    report_section: str | None = None

    def __init__(self, options: dict | None = None):
        self.options = parse_options(self.name, self.OPTIONS, options)

    def requires(self, graph: gs.Graph) -> None:
        """Precondition on the input graph; raise ``PassError`` when it does not hold."""

    def ensures(self, graph: gs.Graph, result: PassResult) -> None:
        """Postcondition on the result; raise ``PassError`` when it does not hold."""

    def run(self, graph: gs.Graph, progress=None) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: gs.Graph, progress=None) -> PassResult:
        self.requires(graph)
        result = self.run(graph, progress)
        if not isinstance(result.modified, bool):
            raise PassError(f"{self.name}: modified must be a bool, got {result.modified!r}")
        if self.in_place and result.graph is not graph:
            raise PassError(f"{self.name}: declared in place but returned another graph")
        self.ensures(graph, result)
        return result


@dataclasses.dataclass(frozen=True)
class Option:
    """One recipe/CLI option of a pass: kebab-case key, validator, default, help."""

    key: str
    check: Callable[[str, Any], Any]  # (key, raw value) -> normalised value; raises UsageError
    default: Any
    help: str


def parse_options(pass_name: str, schema: tuple[Option, ...], raw: dict | None) -> dict:
    """Validate ``raw`` against ``schema``: unknown keys and bad values are usage errors."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UsageError(f"{pass_name}: options must be a mapping, got {type(raw).__name__}")
    known = {o.key: o for o in schema}
    unknown = sorted(set(map(str, raw)) - set(known))
    if unknown:
        raise UsageError(
            f"{pass_name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    out = {}
    for opt in schema:
        out[opt.key] = opt.check(f"{pass_name}.{opt.key}", raw[opt.key]) if opt.key in raw else opt.default
    return out


# ---- validators (shared by the recipe parser and the CLI)


def check_float(lo: float | None = None, hi: float | None = None, *, hi_open: bool = False):
    def check(key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"{key}: expected a number, got {short_repr(v)}")
        v = float(v)
        if v != v or v in (float("inf"), float("-inf")):
            raise UsageError(f"{key}: expected a finite number, got {v}")
        if lo is not None and v < lo:
            raise UsageError(f"{key}: must be >= {lo}, got {v}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise UsageError(f"{key}: must be {'<' if hi_open else '<='} {hi}, got {v}")
        return v
    return check


def check_optional(inner):
    def check(key: str, v: Any):
        return None if v is None else inner(key, v)
    return check


def check_int(lo: int = 0):
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise UsageError(f"{key}: expected an integer, got {short_repr(v)}")
        if v < lo:
            raise UsageError(f"{key}: must be >= {lo}, got {v}")
        return v
    return check


def check_choice(*choices: str):
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise UsageError(f"{key}: expected one of {', '.join(choices)}, got {short_repr(v)}")
        return v
    return check


def check_bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"{key}: expected true or false, got {short_repr(v)}")
    return v


def check_str_list(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise UsageError(f"{key}: expected a list of non-empty strings, got {short_repr(v)}")
    return tuple(v)
