"""Argument types and the parser class shared by every command: numbers are range-checked
here, so a bad value is a one-line usage error (exit 2) before any work.
"""

from __future__ import annotations

import argparse
from onnxprune.core.errors import (EXIT_USAGE)
from onnxprune.cli.output import print_error


def float_arg(lo=None, hi=None, hi_open=False, lo_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        return v
    return parse


def int_arg(lo: int = 1, hi: int | None = None):
    """An integer option in [lo, hi]: counts (batch, threads, epochs) start at 1, seeds at 0."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {v}")
        return v
    return parse


# Seeds go to numpy and torch generators, which take 0 .. 2^32-1 (torch up to 2^64-1).
SEED_MAX = 2**32 - 1
# ONNX Runtime stores a thread count in a C int; far above any machine's cores anyway.
THREADS_MAX = 4096


def layer_arg(text):
    glob, sep, q = text.rpartition("=")
    if not sep or not glob:
        raise argparse.ArgumentTypeError(f"expected GLOB=Q, got {text!r}")
    return glob, float_arg(0.0)(q)


def output_kind_arg(text: str) -> tuple[str, str]:
    """``--output-kind NAME=KIND`` → ``(NAME, KIND)``; the last ``=`` splits (an output name
    may hold one). Whether NAME is an output and KIND a kind is checked against the model."""
    name, sep, kind = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=scores or NAME=values, got {text!r}")
    return name, kind


# The end of every --output-kind help: the rule it overrides (runtime.datasets.output_kinds).
OUTPUT_KIND_RULE = ("repeatable. It overrides the default rule, which takes an output as class "
                    "scores when it is [N, C>=2] and a Softmax/LogSoftmax produces or an ArgMax "
                    "reads it, or its name contains logit, score, prob or class")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's default is exit 2 too, but with its usage block before the message; errors
        # here are one line (README), so the usage is a pointer to --help on that line
        print_error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_USAGE)


# --input-shape on the commands that count FLOPs (inspect, report)
FLOPS_SHAPE_HELP = ("size of an input the model leaves symbolic, e.g. images=1x3x640x640 "
                    "(repeatable), so its layers' FLOPs are counted")
