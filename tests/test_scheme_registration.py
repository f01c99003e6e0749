"""A scheme registered from outside the package runs through everything a built-in one does:
resolve, ADMM, freeze, masked retraining and the model file. It uses only the interface
``prunekit.schemes.base.Scheme`` declares (a fixed rate and its own rate check), so this
fails if any layer above ``schemes/`` goes back to asking what a scheme is."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import prunekit
from prunekit import schemes
from prunekit.constraints import Support
from prunekit.errors import TargetError
from prunekit.schemes.base import Scheme
from prunekit.training import finetune


class EveryOtherRow(Scheme):
    """Keeps the even GEMM rows and zeroes the odd ones: one fixed structure, whose rate is
    the share of odd rows (half of an even number of rows)."""

    name = "every_other_row"
    natural_sparsity = 0.5
    fixed_rate = True

    def check_rate(self, shape, sparsity, *, gates: int = 1) -> None:
        if sparsity is not None:
            raise TargetError(f"{self.name} fixes its own rate; leave 'sparsity' out")
        if shape[0] % 2:
            raise TargetError(f"{self.name} needs an even number of rows, got {shape[0]}")

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        keep = torch.zeros(m.shape, dtype=torch.bool)
        keep[0::2] = True
        return keep

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return torch.linalg.vector_norm(m, dim=1)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(schemes._REGISTRY, EveryOtherRow.name, EveryOtherRow)
    return EveryOtherRow


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


def data(n: int = 64) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def odd_rows_zero(w: Tensor) -> bool:
    return bool((w[1::2] == 0).all()) and bool((w[0::2] != 0).all())


def test_a_scheme_from_outside_runs_resolve_admm_freeze_retrain_and_the_file(registered,
                                                                               tmp_path):
    model = mlp()
    targets = prunekit.resolve(model, [{"layers": ["0", "2"], "scheme": "every_other_row"}])
    assert [t.name for t in targets] == ["0.weight", "2.weight"]
    assert all(t.sparsity is None and isinstance(t.scheme, EveryOtherRow) for t in targets)

    admm = prunekit.ADMM(model, targets, rho=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    admm.bind(optimizer)
    for _ in range(3):
        for x, y in data():
            loss = nn.functional.cross_entropy(model(x), y) + admm.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            admm.after_step()
        admm.end_epoch()
    frozen = admm.freeze()
    admm.close()
    assert set(frozen) == {"0.weight", "2.weight"}
    assert all(isinstance(c, Support) for c in frozen.values())
    weights = dict(model.named_parameters())
    assert all(odd_rows_zero(weights[n].detach()) for n in frozen)
    assert frozen["0.weight"].hints["scheme"] == "every_other_row"

    finetune(model, frozen, data(), config={"epochs": 1, "optimizer": "sgd", "lr": 0.1,
                                            "progress": False})
    assert all(odd_rows_zero(weights[n].detach()) for n in frozen)

    path = prunekit.save(model, tmp_path / "toy.pkz", frozen)
    loaded = prunekit.load(path, model=mlp())
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, weights[name])
    assert {n: c.mask.tolist() for n, c in loaded.constraints.items()} == \
        {n: c.mask.tolist() for n, c in frozen.items()}


def test_its_own_rate_check_and_fixed_rate_are_honoured(registered):
    model = mlp()
    with pytest.raises(TargetError, match="fixes its own rate"):
        prunekit.resolve(model, [{"layers": "0", "scheme": "every_other_row",
                                  "sparsity": 0.3}])
    with pytest.raises(TargetError, match="fixed rate"):
        prunekit.resolve(model, [{"layers": "*", "scheme": "every_other_row",
                                  "sparsity": 0.5, "allocation": "global"}])
    odd = nn.Sequential(nn.Linear(8, 5))
    with pytest.raises(TargetError, match="even number of rows"):
        prunekit.resolve(odd, [{"layers": "0", "scheme": "every_other_row"}])
