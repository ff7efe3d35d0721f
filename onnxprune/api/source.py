"""What every API verb takes as a model: a path, or a ``ModelProto`` already in memory."""

from __future__ import annotations

import os
import tempfile

from onnx import ModelProto

from onnxprune.core import io
from onnxprune.core.errors import UsageError


def open_model(model, *, lazy: bool = False, what: str = "model") -> tuple[ModelProto, "io.LoadInfo | None"]:
    """``(ModelProto, LoadInfo)`` for a path, ``(validated copy, None)`` for a ``ModelProto``.

    A model in memory gets the same checks as a file (``io.load``): it is serialised to a
    private temporary file and read back, so a malformed graph, an unsafe external-data
    reference (resolved against that empty folder, hence refused) or an oversized tensor raises
    ``InvalidModelError`` exactly as it would from disk; the caller's proto is never modified.
    Anything else raises ``UsageError``.
    """
    if isinstance(model, (str, os.PathLike)):
        return io.load(model, lazy=lazy)
    if not isinstance(model, ModelProto):
        raise UsageError(f"{what}: expected a path or an onnx.ModelProto, "
                         f"got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        copy, _ = io.load(path)  # not lazy: the folder is gone on return
    return copy, None


def model_files(info) -> list[str]:
    """The files a model was read from (none for a model given in memory)."""
    return [info.path, *info.data_files] if info is not None else []


def path_of(model) -> str | None:
    """The path as the caller gave it (the report names it so), None for a ModelProto."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
