"""``python -m onnxprune.cli`` (and ``torchrun ... -m onnxprune.cli``) runs the command line."""

import sys

from onnxprune.cli.app import main

sys.exit(main())
