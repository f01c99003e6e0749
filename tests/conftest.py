"""Test-suite settings.

Tests use tiny tensors, for which torch's intra-op threading costs more than it saves (and
oversubscribes a small CI machine), so the whole suite runs single-threaded.
"""

import torch

torch.set_num_threads(1)

# CI must be repeatable: hypothesis draws the same examples on every run.
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")
