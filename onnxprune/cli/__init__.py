"""The ``onnxprune`` command line: ``main`` parses the arguments and hands each command to its
module (``prune``, ``check``, ``bench``, ``training``, ``analysis``, ``demo``); ``args`` and
``output`` hold what the commands share.  Nothing below the CLI imports it."""

from onnxprune.cli.app import main

__all__ = ["main"]
