"""The pass registry: every pass name a recipe or the CLI may use, in one place."""

from __future__ import annotations

from .adjust_dropout import AdjustDropout
from .base import PassError, PassResult
from .lower_to_sparse_ops import LowerToSparseOps
from .remove_dead_neurons import RemoveDeadNeurons
from .threshold_by_std import ThresholdByStd

REGISTRY = {
    ThresholdByStd.name: ThresholdByStd,
    RemoveDeadNeurons.name: RemoveDeadNeurons,
    AdjustDropout.name: AdjustDropout,
    LowerToSparseOps.name: LowerToSparseOps,
}

__all__ = ["REGISTRY", "PassResult", "PassError", "ThresholdByStd", "RemoveDeadNeurons",
           "AdjustDropout", "LowerToSparseOps"]
