"""Test-suite settings.

Tests use tiny tensors, for which torch's intra-op threading costs more than it saves (and
oversubscribes a small CI machine), so the whole suite runs single-threaded.
"""

import torch

torch.set_num_threads(1)
