"""onnxprune: prune ONNX models by per-layer quality × std thresholds (Han et al., NIPS 2015).

The verbs of the command line are functions here (``onnxprune.prune``, ``lower``, ``inspect``,
``check``, ``compress``, ``finetune``; see :mod:`onnxprune.api`). They are imported on first use, so
``import onnxprune`` stays cheap and loads neither ONNX Runtime nor torch.
"""

__version__ = "0.1.0"

_VERBS = ("prune", "lower", "inspect", "check", "compress", "finetune")


def __getattr__(name: str):
    if name in _VERBS:
        from onnxprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_VERBS])
