"""The fine-tune bridge: retrain a pruned ONNX graph in PyTorch and write the weights back.

A pass-like stage (DESIGN.md §2): it takes a graph plus data and returns *the same graph*
with new weight values — never a re-exported graph.  Pieces:

* :func:`build_module` — an ``nn.Module`` that interprets the graph node by node through a
  small op table (:mod:`.ops`); trainable parameters are the graph's weights, addressed by
  initializer / Constant-output name;
* :func:`finetune` — masked retraining per Han et al. 2015 (pruned weights stay exactly
  zero, L2/L1, Dropout ratio D_r = D_o·√(C_ir/C_io), conv/fc freezing, seeds, CPU/CUDA,
  torchrun + DDP); see :mod:`.train`;
* :func:`write_back` — the input graph with new weight values and nothing else changed
  (numpy only, see :mod:`.weights`).

torch is imported only when :func:`build_module` or :func:`finetune` is first used, so
``import onnxprune.training.torch_bridge`` (config, write-back) works without the torch extra.

Why our own interpreter rather than a converter package (evaluated on torch 2.13 CPU,
onnx 1.23):

* **onnx2torch** 1.5.15 (last release 2024-08): imports ``torchvision`` at package import
  (for NMS/RoIAlign) and PyPI torchvision does not import beside the torch 2.13.0 CPU wheel;
  with torchvision stubbed out it names parameters by *node* (``fc/Gemm.weight``), not by
  initializer, turns weights held in ``Constant`` nodes and weights shared by two nodes into
  non-trainable (duplicated) buffers, and has no converter for opset-19 ``Reshape``, which
  torch's default (dynamo) exporter emits — so it cannot rebuild a plain LeNet export.
* **onnx2pytorch** 0.6.0: same hard torchvision import; parameter names come from node
  output names (``Conv_/c/Conv_output_0.weight``) while the initializers are kept again as
  buffers (two copies, only one trained); Constant-held weights are buffers.
* Both would need a name map reconstructed from their internal module tree to write back,
  and neither keeps pruned weights or BatchNormalization statistics addressable by the
  graph's own names.  An op table of ~70 entries (one torch call each, checked against ONNX
  Runtime per op) gives exact name-keyed write-back, Constant and shared weights for free,
  a static unsupported-op check, and no extra dependency.
"""

from __future__ import annotations

from onnxprune.training.torch_bridge.config import FinetuneConfig, FinetuneResult
from onnxprune.training.torch_bridge.weights import (
    UnsupportedOpError, WeightInfo, find_weights, read_weights, write_back,
)

__all__ = [
    "FinetuneConfig", "FinetuneResult", "WeightInfo", "build_module", "finetune",
    "find_weights", "read_weights", "write_back", "OnnxModule", "UnsupportedOpError",
]

_LAZY = {
    "build_module": "onnxprune.training.torch_bridge.module",
    "OnnxModule": "onnxprune.training.torch_bridge.module",
    "finetune": "onnxprune.training.torch_bridge.train",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        from onnxprune.core.errors import UsageError

        raise UsageError("fine-tuning needs PyTorch: pip install 'onnxprune[torch]'") from exc
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
