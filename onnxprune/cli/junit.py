"""``--junit PATH``: a command's gates as a JUnit XML file, the format CI test reporters read
(GitLab ``artifacts:reports:junit``, Jenkins ``junit``, GitHub test-report actions).

One ``<testsuites>`` holding one ``<testsuite>`` per command run; one ``<testcase>`` per gate
(``prune``: min-sparsity, max-size-mb; ``compress``: max-accuracy-drop) or per checked output
(``check``).  A run given no gate is one passing case named after the command, so CI still shows
that it ran.  A missed gate is ``<failure message="...">`` carrying the measured value and the
bound; a passing case is empty.  Invariants: ``tests`` = number of cases, ``failures`` = number
of ``<failure>`` children, ``errors`` = ``skipped`` = 0 (a command that fails to run exits 1/2/4
and writes no report, JUnit included); ``time`` is the command's wall time in seconds, and a
case's time is 0 (gates are decided on numbers the run already measured).  Names and messages
go through ``printable``: XML 1.0 cannot carry most control characters.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET

from onnxprune.core.console import printable

# Messages quote names and numbers from the user's model: keep an attribute one readable line.
MAX_MESSAGE_CHARS = 2000


def add_junit_arg(p: argparse.ArgumentParser) -> None:
    """The ``--junit PATH`` option of a command that has gates."""
    p.add_argument("--junit", metavar="PATH",
                   help="also write the gates as JUnit XML (one test case per gate), "
                        "for CI test reporters")


def case(name: str, failure: str | None = None) -> dict:
    """One test case: ``failure`` is None when it passed, else the message."""
    return {"name": name, "failure": failure}


def gate_cases(command: str, gates: list[dict], describe) -> list[dict]:
    """A case per gate of a prune/compress report (``{"name", "required", "actual",
    "passed"}``), or one passing case named ``command`` when there is none.  ``describe(g)``
    words a missed gate's measured value against its bound."""
    if not gates:
        return [case(command)]
    return [case(g["name"], None if g["passed"] else describe(g)) for g in gates]


def prune_cases(report: dict) -> list[dict]:
    """``prune``: min-sparsity (measured sparsity ≥ bound), max-size-mb (size ≤ bound)."""
    def describe(g):
        word = "at least" if g["name"] == "min-sparsity" else "at most"
        return f"{g['name']}: measured {g['actual']:.6g}, required {word} {g['required']:g}"
    return gate_cases("prune", report["gates"], describe)


def compress_cases(report: dict) -> list[dict]:
    """``compress``: max-accuracy-drop (val top-1 drop in percentage points ≤ bound; a
    label-free run names its own measure: agreement, or 1 - rel. error)."""
    from onnxprune.runtime.evaluate import short_measure

    measure = short_measure(report.get("accuracy_dense") or {})

    def describe(g):
        return (f"{g['name']}: val {measure} dropped {g['actual']:.6g} pp, "
                f"allowed at most {g['required']:g} pp")
    return gate_cases("compress", report["gates"], describe)


def check_cases(report: dict) -> list[dict]:
    """``check``: one case per output pair, failing with its error and the tolerance; a
    comparison that could not pair the outputs (count differs) is one failing case."""
    if not report["outputs"] and "reason" in report:
        return [case("outputs", report["reason"])]
    atol, rtol = report.get("atol"), report.get("rtol")
    return [case(f"output {o['index']}", None if o["passed"] else _output_failure(o, atol, rtol))
            for o in report["outputs"]]


def _output_failure(o: dict, atol, rtol) -> str:
    """Why one output pair failed: shape, non-numeric, or its error against the bound
    ``|c − r| ≤ atol + rtol·|r|``."""
    if "shape_ref" in o:
        return f"shape differs: reference {o['shape_ref']}, candidate {o['shape_candidate']}"
    if o.get("max_abs_error") is None:
        return "non-numeric output differs"
    msg = (f"max abs error {o['max_abs_error']:.6g}, max rel error {o['max_rel_error']:.6g}; "
           f"bound |c - r| <= atol {atol:g} + rtol {rtol:g} * |r|")
    if o.get("unfixable"):
        msg += f"; {o['unfixable']} value(s) NaN or infinite on one side only"
    return msg


def junit_xml(command: str, cases: list[dict], seconds: float) -> bytes:
    """The JUnit XML text of one run of ``command`` (see the module docstring)."""
    failures = sum(c["failure"] is not None for c in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0",
              "skipped": "0", "time": f"{max(seconds, 0.0):.3f}"}
    root = ET.Element("testsuites", {"name": "onnxprune", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"onnxprune {command}", **counts})
    for c in cases:
        el = ET.SubElement(suite, "testcase", {"name": printable(c["name"], MAX_MESSAGE_CHARS),
                                               "classname": f"onnxprune.{command}",
                                               "time": "0.000"})
        if c["failure"] is not None:
            ET.SubElement(el, "failure", {"message": printable(c["failure"], MAX_MESSAGE_CHARS),
                                          "type": "GateFailed"})
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(dest: str | None, command: str, cases: list[dict], seconds: float) -> None:
    """Write the JUnit file atomically (nothing when ``dest`` is None)."""
    if dest is None:
        return
    from onnxprune.cli.output import write_atomic

    write_atomic(dest, junit_xml(command, cases, seconds), label="--junit: ")
