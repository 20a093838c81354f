"""Processes the tests start (`python -m alexkit`, torchrun) import alexkit from this checkout, not
from whichever copy the environment has installed."""

import os
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
