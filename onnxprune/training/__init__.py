"""The training layer: the prune -> retrain -> iterate loop (``compress``) and the PyTorch
fine-tune bridge (``torch_bridge``; torch is imported lazily, it is an optional extra).  Builds
on ``core``, ``passes`` and ``runtime``."""
