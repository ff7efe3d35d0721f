"""The runtime layer: ONNX Runtime sessions (``check.make_session``), comparing two models'
outputs (``check``), accuracy (``evaluate``), ``.npz`` data sets (``datasets``) and timing dense
against lowered models (``bench``).  Builds on ``core`` and ``passes``."""
