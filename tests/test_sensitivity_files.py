"""sensitivity.csv and recipe.yaml read back to exactly what was written, whatever the layer names."""

import csv
import glob
import io
import types

import yaml

from onnxprune.analysis import sensitivity as sens

# Names a graph may carry: separators, quotes, YAML indicators, glob brackets, line breaks, non-ASCII.
AWKWARD = ["fc1", "a,b", 'say "hi"', "line\nbreak", "carriage\rreturn", "k: v", "- dash", "#hash",
           "conv[0]", "*star?", "ünï ★", "  padded  ", "true", "1.5", ""]


def _point(i: int) -> dict:
    q = 0.1 * i
    return {"grid": i, "quality": q, "threshold": q / 3, "sparsity": 1 / (i + 3), "nonzero": 10 - i,
            "top1": 0.9 - q / 7, "top5": None, "drop_pp": -q}


def test_curves_csv_reads_back_cell_for_cell():
    layers = [{"name": n, "kind": "conv", "op": "Conv", "params": 100 + i, "points": [_point(i), _point(i + 1)]}
              for i, n in enumerate(AWKWARD)]
    text = sens.curves_csv(types.SimpleNamespace(layers=layers))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(sens.CSV_COLUMNS)
    expected = [[layer["name"], layer["kind"], layer["op"], str(layer["params"]), str(p["grid"]),
                 repr(p["quality"]), repr(p["threshold"]), repr(p["sparsity"]), str(p["nonzero"]),
                 repr(p["top1"]), "", repr(p["drop_pp"])]
                for layer in layers for p in layer["points"]]
    assert rows[1:] == expected
    # floats read back bit-identical
    assert [float(r[5]) for r in rows[1:]] == [p["quality"] for layer in layers for p in layer["points"]]


def test_recipe_yaml_parses_to_the_recommendation():
    analysed = AWKWARD[:-3]
    qualities = [0.0, 1e-05, 0.1, 1 / 3, 2.5, 1e20, 0.7000000000000001] * 3
    rec = {"rule": "per-layer", "budget_pp": 1.0,
           "layers": [{"name": n, "quality": q, "sparsity": 0.5, "drop_pp": 0.25}
                      for n, q in zip(analysed, qualities)]}
    text = sens.recipe_yaml(rec, AWKWARD, source="m\nodel.onnx", val="val.npz")
    data = yaml.safe_load(text)
    assert data == {"version": 1, "emit": "portable", "passes": [{"threshold-by-std": {
        "layers": {glob.escape(n): q for n, q in zip(analysed, qualities)},
        "skip": [glob.escape(n) for n in AWKWARD[-3:]]}}]}
    layers = data["passes"][0]["threshold-by-std"]["layers"]
    assert all(type(v) is float for v in layers.values())
    assert list(layers) == [glob.escape(n) for n in analysed]  # order kept, not sorted
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(comments) == 4 + len(analysed)  # the header stays; no name broke out of its comment


def test_recipe_yaml_without_skipped_layers_has_no_skip_key():
    rec = {"rule": "total", "total_budget_pp": 2.0, "per_layer_budget_pp": 0.5,
           "layers": [{"name": "fc", "quality": 0.5, "sparsity": 0.4, "drop_pp": 0.1}]}
    data = yaml.safe_load(sens.recipe_yaml(rec, ["fc"], source="m.onnx", val="v.npz"))
    assert data["passes"] == [{"threshold-by-std": {"layers": {"fc": 0.5}}}]
