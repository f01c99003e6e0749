"""Sequence classifiers on ``nn.GRU`` / ``nn.LSTM``.

They use torch's own recurrent modules (not hand-written cells) so the stacked gate matrices
``rnn.weight_ih_l{k}[_reverse]`` and ``rnn.weight_hh_l{k}[_reverse]`` are ordinary
parameters that pruning targets can name, and torch's fused kernels still run them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ._common import boolean, check_input, choice, positive_int, shape_tuple

#: Default (time steps, features) of one sequence.
SEQUENCE_SHAPE = (20, 16)
POOLS = ("last", "mean")
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNClassifier(nn.Module):
    """``rnn`` (batch-first GRU or LSTM) over ``[B, T, F]`` input, then linear ``fc``.

    ``pool="last"`` classifies from the final hidden state of the top layer (for a
    bidirectional net: the forward direction after the last step joined with the backward
    direction after the first step, so both have read the whole sequence); ``pool="mean"``
    averages the top layer's outputs over time.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        num_classes: int,
        pool: str,
        dropout: float,
        seq_len: int,
    ):
        super().__init__()
        self.model_name = f"{cell}_classifier"
        self.input_shape = (seq_len, input_size)
        self.pool = pool
        self.num_directions = 2 if bidirectional else 1
        self.rnn = CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            batch_first=True,
        )
        self.fc = nn.Linear(hidden_size * self.num_directions, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        hint = "pass input_size= the number of features per time step"
        if x.dim() == 4 and x.shape[1] == 1:  # a 1-channel image read row by row
            x = x.squeeze(1)
        check_input(self.model_name, x, (None, self.input_shape[1]), hint)
        out, h = self.rnn(x)
        if self.pool == "mean":
            return self.fc(out.mean(dim=1))
        h_n = h[0] if isinstance(h, tuple) else h  # LSTM returns (h_n, c_n)
        top = h_n[-self.num_directions :]  # [directions, B, H] of the top layer
        return self.fc(top.transpose(0, 1).flatten(1))  # [B, directions * H]


def _classifier(
    cell: str,
    input_size: int | None,
    hidden_size: int,
    num_layers: int,
    bidirectional: bool,
    num_classes: int,
    pool: str,
    dropout: float,
    input_shape: Sequence[int] | None,
) -> RNNClassifier:
    name = f"{cell}_classifier"
    seq_len, features = SEQUENCE_SHAPE
    if input_size is not None:
        input_size = positive_int(name, "input_size", input_size)
    if input_shape is not None:
        if len(input_shape) == 3 and input_shape[0] == 1:
            # a 1-channel image (1, H, W) is read as a sequence of H rows of W features
            input_shape = tuple(input_shape[1:])
        seq_len, features = shape_tuple(name, "input_shape", input_shape, 2)
        if input_size is not None and input_size != features:
            raise ConfigError(
                f"{name}: input_size={input_size} contradicts input_shape={list(input_shape)}"
            )
    elif input_size is not None:
        features = input_size
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{name}: dropout must be a number in [0, 1), got {dropout!r}")
    if dropout and num_layers == 1:
        raise ConfigError(f"{name}: dropout acts between layers, so it needs num_layers >= 2")
    return RNNClassifier(
        cell=cell,
        input_size=features,
        hidden_size=positive_int(name, "hidden_size", hidden_size),
        num_layers=positive_int(name, "num_layers", num_layers),
        bidirectional=boolean(name, "bidirectional", bidirectional),
        num_classes=positive_int(name, "num_classes", num_classes),
        pool=choice(name, "pool", pool, POOLS),
        dropout=float(dropout),
        seq_len=seq_len,
    )


def gru_classifier(
    input_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 1,
    bidirectional: bool = False,
    num_classes: int = 10,
    pool: str = "last",
    dropout: float = 0.0,
    input_shape: Sequence[int] | None = None,
) -> RNNClassifier:
    """GRU classifier for ``[B, T, input_size]`` sequences (default input_size 16)."""
    return _classifier(
        "gru",
        input_size,
        hidden_size,
        num_layers,
        bidirectional,
        num_classes,
        pool,
        dropout,
        input_shape,
    )


def lstm_classifier(
    input_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 1,
    bidirectional: bool = False,
    num_classes: int = 10,
    pool: str = "last",
    dropout: float = 0.0,
    input_shape: Sequence[int] | None = None,
) -> RNNClassifier:
    """LSTM classifier for ``[B, T, input_size]`` sequences (default input_size 16)."""
    return _classifier(
        "lstm",
        input_size,
        hidden_size,
        num_layers,
        bidirectional,
        num_classes,
        pool,
        dropout,
        input_shape,
    )
