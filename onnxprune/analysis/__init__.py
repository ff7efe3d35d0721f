"""The analysis layer: per-layer sensitivity (the paper's Fig. 6), figures, and the Markdown /
HTML report.  Builds on ``core``, ``passes`` and ``runtime``."""
