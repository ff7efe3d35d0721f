import os

import onnx
import pytest

from tests.models import cnn, mlp


@pytest.fixture
def mlp_path(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(mlp(sizes=(64, 48, 32, 10)), p)
    return str(p)


@pytest.fixture
def cnn_path(tmp_path):
    p = tmp_path / "cnn.onnx"
    onnx.save(cnn(), p)
    return str(p)


def save_external(model, path, threshold=0):
    """Save with every tensor external, in one data file next to the model."""
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=threshold)


# Long tiers run only when selected with -m (CI runs each once): the default run stays short.
def run_cli(argv, capsys):
    """Run the command line in process: (exit code, stdout, stderr); a parser refusal
    (SystemExit 2) counts as its exit code."""
    from onnxprune.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def labelled_npz(tmp_path, name="d.npz", n=8, features=16, classes=4, seed=0) -> str:
    """A small ``.npz`` of float32 ``x`` (n × features) and int64 labels ``y``; its path."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path = tmp_path / name
    np.savez(path, x=rng.standard_normal((n, features)).astype(np.float32),
             y=rng.integers(0, classes, n).astype(np.int64))
    return str(path)


LONG_TIERS = ("corpus", "fuzz", "slow")


def pytest_configure(config):
    """Test/CI-only knob: ONNXPRUNE_TEST_OPS_LIBRARY points every test at another build of the
    custom-op library (runtime_ops/check_sanitized.sh sets it to the sanitizer build), and
    their sessions at ONNX Runtime without its CPU memory arena."""
    override = os.environ.get("ONNXPRUNE_TEST_OPS_LIBRARY")
    if override:
        if not os.path.isfile(override):
            raise pytest.UsageError(f"ONNXPRUNE_TEST_OPS_LIBRARY={override} is not a file")
        from onnxprune import runtime_ops

        runtime_ops.library_path = lambda: os.path.abspath(override)
        # ONNX Runtime's memory arena would hide a write past a tensor's end from the sanitizer
        # (the bytes after it are the arena's): every tensor its own allocation instead
        with_arena = runtime_ops.session_options

        def session_options(*args, **kwargs):
            opts = with_arena(*args, **kwargs)
            opts.enable_cpu_mem_arena = False
            return opts

        runtime_ops.session_options = session_options


def pytest_collection_modifyitems(config, items):
    selected = config.getoption("markexpr") or ""
    for item in items:
        for tier in LONG_TIERS:
            if item.get_closest_marker(tier) and tier not in selected:
                item.add_marker(pytest.mark.skip(reason=f"long tier: run with -m {tier}"))


def data_file(model_path):
    """The external-data file written beside ``model_path`` (named ``<model>.<hash>.data``)."""
    import glob

    found = glob.glob(glob.escape(str(model_path)) + ".*.data")
    assert len(found) == 1, found
    return found[0]
