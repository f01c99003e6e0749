"""prunekit: compress PyTorch models with ADMM and reweighted-regularization pruning."""

__version__ = "0.1.0"
