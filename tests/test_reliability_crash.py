"""Crash safety: `onnxprune prune` killed with SIGKILL while it writes.

The previous output must be left intact and nothing partial may appear under the final names.
SIGKILL gives the process no chance to clean up, so its temporary files (``.onnxprune-*`` in
the output folder) may stay behind; they never carry the final name.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.conftest import data_file, save_external
from tests.models import mlp

PREVIOUS_MODEL = b"previous model bytes"
PREVIOUS_DATA = b"previous data bytes"


def _big_external_model(folder, rows=8192, cols=12288):
    """y = x·W with W (rows × cols) fp32 stored as external data, written in chunks."""
    data_name = "big.onnx.data"
    nbytes = rows * cols * 4
    rng = np.random.default_rng(0)
    with open(os.path.join(folder, data_name), "wb") as f:
        step = 512
        for r in range(0, rows, step):
            f.write(rng.standard_normal((min(step, rows - r), cols), dtype=np.float32).tobytes())
    t = onnx.TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([rows, cols])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data_name), ("offset", "0"), ("length", str(nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = os.path.join(folder, "big.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path, nbytes


def _leftovers(out_dir, finals):
    return [p for p in os.listdir(out_dir) if p not in finals]


def test_sigkill_mid_write_keeps_previous_output(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src, nbytes = _big_external_model(str(src_dir))
    out = out_dir / "pruned.onnx"
    out.write_bytes(PREVIOUS_MODEL)
    (out_dir / "pruned.onnx.data").write_bytes(PREVIOUS_DATA)
    child = subprocess.Popen([sys.executable, "-m", "onnxprune.cli", "prune", src, "-o", str(out),
                              "--emit", "dense", "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and child.poll() is None:
            for name in os.listdir(out_dir):
                if name.startswith(".onnxprune-") and name.endswith(".data.tmp"):
                    try:
                        size = os.path.getsize(out_dir / name)
                    except FileNotFoundError:
                        continue
                    if 1 << 20 <= size < nbytes:
                        caught = (name, size)
                        break
            if caught:
                break
            time.sleep(0.001)
        assert caught, "the child finished before its data file was caught half-written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    # The previous output is untouched and nothing else carries a final name.
    assert out.read_bytes() == PREVIOUS_MODEL
    assert (out_dir / "pruned.onnx.data").read_bytes() == PREVIOUS_DATA
    left = _leftovers(out_dir, {"pruned.onnx", "pruned.onnx.data"})
    assert left and all(p.startswith(".onnxprune-") and p.endswith(".tmp") for p in left), left
    assert os.path.getsize(out_dir / caught[0]) < nbytes  # it really was cut mid-write
    # A later run succeeds beside the leftovers and replaces the previous output whole.
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", src, "-o", str(out),
                        "--emit", "dense", "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(data_file(out)) == nbytes
    onnx.checker.check_model(str(out))


# Kill the process from inside, deterministically, when it is about to rename its N-th
# temporary file into place (os.replace raises the "os.rename" audit event first).
_KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    n = int(sys.argv[1])
    seen = []
    def hook(event, args):
        if event == "os.rename" and os.path.basename(str(args[0])).startswith(".onnxprune-"):
            seen.append(args)
            if len(seen) == n:
                os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
    from onnxprune.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _previous_pair(tmp_path):
    """A real previous output: the model pruned at q=0 with external data."""
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "m.onnx"
    save_external(mlp(sizes=(64, 48, 10)), str(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(src), "-o", str(out),
                        "--quality", "0", "--emit", "dense", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return src, out


def _kill_at_rename(n, src, out):
    return subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, str(n), "prune", str(src),
                           "-o", str(out), "--quality", "1.5", "--emit", "dense", "-q"],
                          capture_output=True, text=True, timeout=300)


def _pair(out):
    """The model and the data file it references, as bytes keyed by file name."""
    return {p.name: p.read_bytes() for p in (out, type(out)(data_file(out)))}


def test_sigkill_before_first_rename_keeps_previous_pair(tmp_path):
    src, out = _previous_pair(tmp_path)
    before = _pair(out)
    r = _kill_at_rename(1, src, out)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _pair(out) == before
    left = _leftovers(out.parent, set(before))
    assert sorted(p.rsplit(".", 2)[-2] for p in left) == ["data", "onnx"], left  # both temps


def test_sigkill_between_data_and_model_rename_keeps_previous_pair(tmp_path):
    """The data file is named after its content, so the new one never replaces the file the
    previous model uses: a kill after it lands but before the model's rename leaves the
    previous pair as it was (plus an unreferenced new data file)."""
    src, out = _previous_pair(tmp_path)
    before = _pair(out)
    old_model = onnx.load(str(out))
    r = _kill_at_rename(2, src, out)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert out.read_bytes() == before[out.name]
    for name, blob in before.items():
        assert (out.parent / name).read_bytes() == blob
    onnx.checker.check_model(old_model)
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
