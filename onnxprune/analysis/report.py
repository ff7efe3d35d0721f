"""``onnxprune report``: a pruned model's statistics and the paper's figures, as Markdown and HTML.

Contents, each optional part present when its input is given:

* the per-layer table in the layout of the paper's Tables 2–5:

      Weights_l = params of the reference layer,      FLOP_l = 2 · Weights_l · reuse_l
      Weights%_l = nonzero_l / Weights_l,             FLOP%_l = 2 · nonzero_l · reuse_l / FLOP_l

  where the reference is the ``--baseline`` model's layer (matched by layer name, then by
  weight name; dead-neuron removal shrinks shapes, so the model's own shapes would overstate
  what is left) or, without a baseline, the layer's own shape; reuse_l is how often a weight
  is applied per sample (1 for Gemm, H_out·W_out for Conv; :mod:`onnxprune.core.stats`);
* Fig. 4, the mask of one layer (``--layer``, default the largest) as a spy plot;
* Fig. 7, that layer's weight histogram before (baseline) and after (non-zero weights);
* Fig. 5, from a ``compress --json`` report (``--history``): the top-1 drop against the share
  of parameters pruned, after each prune+retrain iteration and just before its retraining:

      pruned_i = 1 − nonzero_i / params_dense,    drop_i = 100 · (top1_dense − top1_i)

  in percentage points, positive = worse: the same sign as ``compress``'s
  ``accuracy_drop_pp`` and ``sensitivity``'s ``drop_pp``.

The HTML page is self-contained: images are embedded as ``data:image/png;base64`` URIs, the
style sheet is inline, there is no script, and a Content-Security-Policy forbids loading
anything else — it can be mailed or archived as one file.  The Markdown refers to the PNG files
written beside it.
"""

from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from onnxprune.runtime.datasets import InvalidDataError
from onnxprune.core.errors import UsageError

MAX_HISTORY_BYTES = 50_000_000

FIGURE_FILES = {"mask": "mask.png", "histogram": "histogram.png", "tradeoff": "tradeoff.png"}


# --------------------------------------------------------------------------- table


def paper_rows(rows: list[dict], baseline_rows: list[dict] | None) -> tuple[list[dict], dict]:
    """Rows of Tables 2–5 (see the module docstring) and the total row."""
    base_by_name = {r["name"]: r for r in baseline_rows or []}
    base_by_weight = {r["weight"]: r for r in baseline_rows or []}
    out = []
    for r in rows:
        ref = base_by_name.get(r["name"]) or base_by_weight.get(r["weight"])
        if baseline_rows is not None and ref is None:
            ref_note = "not in the baseline: relative to its own shape"
            ref = r
        else:
            ref_note = None
            ref = ref or r
        nonzero = r["nonzero"] or 0
        out.append({
            "name": r["name"], "op": r["op"], "kind": r["kind"],
            "weight_shape": r["weight_shape"], "reference_shape": ref["weight_shape"],
            "weights": ref["params"], "flops": ref["flops"], "nonzero": nonzero,
            "flops_remaining": r["flops_remaining"],
            "weights_pct": 100.0 * nonzero / ref["params"] if ref["params"] else None,
            "flops_pct": (100.0 * r["flops_remaining"] / ref["flops"]
                          if ref["flops"] and r["flops_remaining"] is not None else None),
            "note": ref_note or r.get("skipped"),
        })
    weights = sum(x["weights"] for x in out)
    nonzero = sum(x["nonzero"] for x in out)
    known = out and all(x["flops"] is not None and x["flops_remaining"] is not None for x in out)
    flops = sum(x["flops"] for x in out) if known else None
    rem = sum(x["flops_remaining"] for x in out) if known else None
    total = {"name": "total", "weights": weights, "nonzero": nonzero, "flops": flops,
             "flops_remaining": rem,
             "weights_pct": 100.0 * nonzero / weights if weights else None,
             "flops_pct": 100.0 * rem / flops if flops else None,
             "compression": weights / nonzero if nonzero else None}
    return out, total


def _count(n) -> str:
    """Counts as the paper prints them: 235K, 2.3M."""
    if n is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}"
    return str(int(n))


def _pct(x) -> str:
    if x is None:
        return "–"
    # Whole percents as the paper prints them; one decimal below 10% where it matters.
    return f"{x:.0f}%" if x >= 9.95 else f"{x:.1f}%"


TABLE_HEADERS = ("Layer", "Weights", "FLOP", "Weights%", "FLOP%")


def table_cells(rows: list[dict], total: dict) -> list[list[str]]:
    cells = [[r["name"], _count(r["weights"]), _count(r["flops"]), _pct(r["weights_pct"]),
              _pct(r["flops_pct"])] for r in rows]
    cells.append(["Total", _count(total["weights"]), _count(total["flops"]),
                  _pct(total["weights_pct"]), _pct(total["flops_pct"])])
    return cells


# --------------------------------------------------------------------------- history (Fig. 5)


def load_history(path: str) -> dict:
    """A ``compress --json`` report.  Unreadable or not JSON → exit 4; JSON of the wrong
    shape → exit 2."""
    if not os.path.isfile(path):
        raise InvalidDataError(f"history file {path!r} does not exist or is not a file")
    if os.path.getsize(path) > MAX_HISTORY_BYTES:
        raise InvalidDataError(f"history file {path!r} is larger than {MAX_HISTORY_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidDataError(f"history file {path!r} is not readable JSON: {e}") from None
    hist = data.get("history") if isinstance(data, dict) else None
    if not isinstance(hist, list) or not hist:
        raise UsageError(f"{path}: not a `onnxprune compress --json` report (no 'history' list)")
    for i, rec in enumerate(hist):
        if not isinstance(rec, dict):
            raise UsageError(f"{path}: history[{i}] is not an object")
        for key in ("params", "nonzero", "top1"):
            v = rec.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise UsageError(f"{path}: history[{i}].{key} is missing or not a number")
        if rec["params"] <= 0:
            raise UsageError(f"{path}: history[{i}].params must be > 0")
    return data


def history_measure(report: dict) -> str:
    """What a compress report's ``top1`` values are: ``top-1`` (accuracy on labels), or for a
    label-free run ``agreement`` (with the dense model) or ``1 - rel. error``."""
    from onnxprune.runtime.evaluate import short_measure

    return short_measure(report.get("accuracy_dense") or {})


def tradeoff_series(report: dict) -> list[dict]:
    """Fig. 5 series from a compress report: after retraining, and before it."""
    hist = report["history"]
    dense = (report.get("accuracy_dense") or {}).get("top1")
    if not isinstance(dense, (int, float)):
        dense = next((h["top1"] for h in hist if h.get("stage") == "dense"), hist[0]["top1"])
    after, before = [], []
    for h in hist:
        pruned = 1.0 - h["nonzero"] / h["params"]
        label = h.get("stage", "") if h.get("stage") != "iteration" else \
            f"iteration {h.get('iteration')}"
        after.append({"stage": label, "pruned": pruned, "top1": h["top1"],
                      "drop_pp": 100.0 * (dense - h["top1"])})
        b = h.get("top1_before_retrain")
        if isinstance(b, (int, float)):
            before.append({"stage": label, "pruned": pruned, "top1": b,
                           "drop_pp": 100.0 * (dense - b)})
    series = [{"label": "pruned and retrained", "points": after}]
    if before:
        series.append({"label": "pruned, before retraining", "points": before})
    return series


# --------------------------------------------------------------------------- rendering


def _md_table(headers, cells) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    for row in cells:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def render_markdown(data: dict) -> str:
    d = data
    out = [f"# Pruning report: {d['model']}", ""]
    ref = (f"relative to the baseline `{d['baseline']}`" if d.get("baseline")
           else "relative to the model's own weight shapes")
    out += [(f"Per-layer weights and FLOPs in the layout of Han et al. (2015), Tables 2–5, "
             f"{ref}. A multiply-add counts as 2 FLOPs; a conv weight is applied at every "
             "output position."), ""]
    out.append(_md_table(TABLE_HEADERS, d["table"]["cells"]))
    t = d["table"]["total"]
    if t.get("compression"):
        out += ["", (f"Compression: {t['compression']:.1f}× fewer weights "
                     f"({t['nonzero']} of {t['weights']} remain).")]
    for note in d["table"]["notes"]:
        out.append(f"\n- {note}")
    for fig in d["figures"].values():
        out += ["", f"## {fig['heading']}", "", fig["caption"], ""]
        if fig.get("file"):
            out.append(f"![{fig['heading']}]({fig['file']})")
        elif fig.get("missing"):
            out.append(f"_{fig['missing']}_")
        if fig.get("points_table"):
            out += ["", _md_table(*fig["points_table"])]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:70em;
color:#222;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:1em 0}
th,td{padding:.25em .8em;border-bottom:1px solid #ccc;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.total td{font-weight:bold;border-top:2px solid #444}
figure{margin:1.5em 0}
img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.missing{color:#a33}
""".strip()


def _html_table(headers, cells, total_last: bool = False) -> str:
    e = html.escape
    rows = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(cells):
        cls = ' class="total"' if total_last and i == len(cells) - 1 else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def render_html(data: dict, images: dict[str, bytes]) -> str:
    """The self-contained page; ``images`` maps figure key → PNG bytes (embedded)."""
    e = html.escape
    d = data
    ref = (f"relative to the baseline <code>{e(d['baseline'])}</code>" if d.get("baseline")
           else "relative to the model's own weight shapes")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Nothing may be fetched: the page is one file, and opening it must not phone home.
        ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
         'img-src data:; style-src \'unsafe-inline\'">'),
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Pruning report: {e(d['model'])}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>Pruning report: {e(d['model'])}</h1>",
        (f"<p>Per-layer weights and FLOPs in the layout of Han et al. (2015), Tables 2–5, {ref}. "
         "A multiply-add counts as 2 FLOPs; a conv weight is applied at every output "
         "position.</p>"),
        '<section id="layers">',
        _html_table(TABLE_HEADERS, d["table"]["cells"], total_last=True),
    ]
    t = d["table"]["total"]
    if t.get("compression"):
        parts.append(f"<p>Compression: {t['compression']:.1f}× fewer weights "
                     f"({t['nonzero']} of {t['weights']} remain).</p>")
    if d["table"]["notes"]:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in d["table"]["notes"]) + "</ul>")
    parts.append("</section>")
    for key, fig in d["figures"].items():
        parts.append(f'<section id="{e(key)}">')
        parts.append(f"<h2>{e(fig['heading'])}</h2>")
        if key in images:
            b64 = base64.b64encode(images[key]).decode("ascii")
            parts.append(f'<figure><img alt="{e(fig["heading"])}" '
                         f'src="data:image/png;base64,{b64}">'
                         f"<figcaption>{e(fig['caption'])}</figcaption></figure>")
        else:
            parts.append(f"<p>{e(fig['caption'])}</p>")
            if fig.get("missing"):
                parts.append(f'<p class="missing">{e(fig["missing"])}</p>')
        if fig.get("points_table"):
            parts.append(_html_table(*fig["points_table"]))
        parts.append("</section>")
    parts += [f'<footer><p>onnxprune {e(d["tool_version"])}</p></footer>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"
