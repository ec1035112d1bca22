"""Benchmarks: ``python -m pytest benchmarks`` (pytest-benchmark). Each reports a ratio to a peer run
in the same process in ``extra_info``; nothing here asserts a time."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
torch.set_num_threads(1)
