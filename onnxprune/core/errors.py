"""Errors that carry the CLI exit code they map to (DESIGN.md §4).

0 ok · 1 runtime failure · 2 usage/config error · 3 a quality gate failed ·
4 input rejected as invalid or unsafe.  The CLI prints ``str(err)`` on one line and exits
with ``err.exit_code``; anything that is not an ``OnnxPruneError`` is a bug and exits 1.
"""

from __future__ import annotations

import reprlib

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_INVALID_INPUT = 4


class OnnxPruneError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_RUNTIME


class RuntimeFailure(OnnxPruneError):
    exit_code = EXIT_RUNTIME


class UsageError(OnnxPruneError):
    """Bad flags, bad recipe, bad option values."""

    exit_code = EXIT_USAGE


class GateFailed(OnnxPruneError):
    """A quality gate (sparsity, size, accuracy, tolerance) was missed."""

    exit_code = EXIT_GATE


class InvalidModelError(OnnxPruneError):
    """The input model (or data file) is malformed or unsafe to load."""

    exit_code = EXIT_INVALID_INPUT


class UnsafePathError(InvalidModelError):
    """External data points outside the model's folder, or through a symlink."""


# Values quoted in messages come from users' files: a few lines of YAML aliases expand to a
# structure whose full repr is hundreds of megabytes.  reprlib elides inside containers and long
# strings, so the cost is bounded by these limits, not by the value.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def short_repr(value, limit: int = 120) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters, cut with "…"."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def name_list(names, limit: int = 12) -> str:
    """Names for an error message: the first ``limit``, then how many more (a model may have
    thousands of layers, and the message stays one readable line)."""
    names = list(names)
    shown = ", ".join(str(n) if len(str(n)) <= 60 else str(n)[:59] + "…" for n in names[:limit])
    more = len(names) - limit
    return shown + (f", … ({more} more)" if more > 0 else "") if names else "(none)"
