"""onnxprune: prune ONNX models by per-layer quality × std thresholds (Han et al., NIPS 2015)."""

__version__ = "0.1.0"
