"""What every pass returns, and how pass options are declared.

A pass is a callable ``pass_(graph) -> PassResult``.  It checks its preconditions up front and
raises (``PassError``) rather than logging and carrying on; it never reads or writes files.
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
    graph: gs.Graph
    modified: bool
    stats: dict[str, Any]


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


def check_str_list(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise UsageError(f"{key}: expected a list of non-empty strings, got {short_repr(v)}")
    return tuple(v)
