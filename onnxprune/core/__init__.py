"""The core layer: model files (``io``, the only module that reads or writes them), graph
helpers and the weight table (``graph``), the numeric core (``masks``), layer statistics
(``stats``), errors and terminal output.  It imports nothing else of onnxprune but the native
ops' loader."""
