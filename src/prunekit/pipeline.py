"""Run a recipe: dense training, pruning, hardening, masked retraining, report.

Each stage writes its result atomically into the run directory before the next stage starts
(``dense.pt``, ``hardened.pt``, ``model.pt``), and each training stage checkpoints every epoch
under ``ckpt/``. ``resume=True`` skips finished stages by loading their results and continues
the unfinished one from its last checkpoint; because the trainer reseeds every epoch from
(seed, epoch), a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import methods, models
from .errors import ConfigError
from .io import atomic_write_text, load_checkpoint, save_checkpoint
from .masks import MaskEnforcer, attach_masks, get_masks, load_masked_state_dict
from .recipe import Recipe
from .report import build_report, format_report, write_report
from .report.counting import layers_from_targets
from .targets import Target, resolve
from .train import TrainConfig, Trainer, evaluate, set_seed

MODEL_FORMAT = "prunekit.model/1"
PRUNE_KEYS = {"method", "targets", "train"}


#: settings a pruning or retraining stage takes from the recipe's ``train`` section; the
#: optimizer and schedule are the stage's own (an Adam stage must not inherit SGD's nesterov)
INHERITED = ("seed", "device", "progress", "label_smoothing", "grad_clip")


def stage_config(recipe: Recipe, section: str, overrides: dict[str, Any] | None) -> TrainConfig:
    """A stage's training settings: its own section, plus the shared settings of ``train``."""
    train = recipe["train"]
    if section == "train":
        merged = {"seed": recipe["seed"], **train}
    else:
        shared = {k: train[k] for k in INHERITED if k in train}
        merged = {"seed": recipe["seed"], **shared, **(overrides or {})}
    try:
        return TrainConfig.from_dict(merged)
    except ConfigError as exc:
        raise ConfigError(f"{recipe.where(section)}: {section}: {exc}") from exc


class Run:
    """One execution of a recipe into ``out_dir``."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, progress: bool = True,
                 echo: Callable[[str], Any] = print) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.progress = progress
        self.echo = echo
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def data_options(self) -> dict[str, Any]:
        d = self.recipe["data"]
        options = dict(d.get("options") or {})
        if datasets.dataset_info(d["name"]).name == "synthetic":
            options.setdefault("input_shape", list(self.input_shape_for_synthetic()))
        return options

    def input_shape_for_synthetic(self) -> tuple[int, ...]:
        m = self.recipe["model"]
        if m.get("input_shape"):
            return tuple(m["input_shape"])
        try:
            return tuple(models.default_input_shape(m["name"], **(m.get("kwargs") or {})))
        except ConfigError as exc:
            raise ConfigError(
                f"{self.recipe.where('model')}: model.input_shape is needed to make synthetic "
                f"data for {m['name']!r}: {exc}"
            ) from exc

    def build_data(self) -> None:
        d = self.recipe["data"]
        options = self.data_options()
        self.info = datasets.dataset_info(d["name"], **options)
        self.train_loader, self.test_loader = datasets.get_loaders(
            d["name"], root=d["root"], batch_size=d["batch_size"],
            test_batch_size=d["test_batch_size"], download=d["download"],
            seed=self.recipe["seed"], augment=d["augment"], limit_train=d["limit_train"],
            limit_test=d["limit_test"], **options,
        )

    def build_model(self) -> nn.Module:
        m = self.recipe["model"]
        kwargs = dict(m.get("kwargs") or {})
        if ":" not in m["name"]:  # zoo models learn the data's shape and classes
            kwargs.setdefault("num_classes", self.info.num_classes)
            kwargs.setdefault("input_shape", tuple(self.info.input_shape))
        torch.manual_seed(self.recipe["seed"])
        return models.from_spec(m["name"], **kwargs)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.info.input_shape)

    def trainer(self, model: nn.Module, stage: str, config: TrainConfig,
                plugins: list[Any]) -> Trainer:
        config.progress = self.progress and config.progress
        return Trainer(model, config, self.train_loader, self.test_loader, plugins=plugins,
                       checkpoint_path=self.out / "ckpt" / f"{stage}.pt", stage=stage)

    # ------------------------------------------------------------------ stages
    def run(self, resume: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "recipe.yaml", self.recipe.to_yaml())
        set_seed(self.recipe["seed"])
        self.build_data()
        model = self.build_model()

        self.dense_stage(model, resume)
        weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
        acc_dense = evaluate(model, self.test_loader)["accuracy"]
        self.echo(f"dense accuracy: {acc_dense:.4f}")

        targets: list[Target] = []
        method_name = None
        if self.recipe["prune"] is not None:
            targets, method_name = self.prune_stage(model, resume)
            self.retrain_stage(model, resume)
        acc = evaluate(model, self.test_loader)["accuracy"]

        self.save_model(model, targets, acc_dense, acc)
        report = build_report(
            model, self.example_input(), layers=layers_from_targets(targets),
            accuracy_dense=acc_dense, accuracy_compressed=acc, method=method_name,
            epochs=len(self.history), seconds=sum(r.get("seconds", 0.0) for r in self.history),
            history=self.history,
            extra={"recipe": self.recipe["name"], "dataset": self.info.name,
                   "model": self.recipe["model"]["name"],
                   "wall_seconds_this_invocation": time.perf_counter() - start},
        )
        weights_after = {n: p.detach().clone() for n, p in model.named_parameters()}
        write_report(self.out, report, history=self.history, weights_before=weights_before,
                     weights_after=weights_after)
        return report

    def dense_stage(self, model: nn.Module, resume: bool) -> None:
        m = self.recipe["model"]
        path = self.out / "dense.pt"
        if resume and path.exists():
            saved = load_checkpoint(path)
            load_masked_state_dict(model, saved["state_dict"])
            self.history += saved["history"]
            return
        history: list[dict[str, Any]] = []
        if m.get("checkpoint"):
            state = load_checkpoint(m["checkpoint"])
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                load_masked_state_dict(model, state)
            except (RuntimeError, KeyError) as exc:
                raise ConfigError(
                    f"{self.recipe.where('model', 'checkpoint')}: model.checkpoint "
                    f"{m['checkpoint']} does not fit model {m['name']!r}: {exc}"
                ) from exc
        else:
            config = stage_config(self.recipe, "train", None)
            if config.epochs > 0:
                history = self.trainer(model, "pretrain", config, []).fit(resume=resume)
        save_checkpoint({"state_dict": model.state_dict(), "history": history}, path)
        self.history += history

    def make_targets(self, model: nn.Module) -> list[Target]:
        rules = self.recipe["prune"]["targets"]
        try:
            return resolve(model, rules)
        except ConfigError as exc:
            where = self.recipe.where("prune", "targets")
            raise ConfigError(f"{where}: prune.targets: {exc}") from exc

    def prune_stage(self, model: nn.Module, resume: bool) -> tuple[list[Target], str]:
        prune = self.recipe["prune"]
        name = prune["method"]
        targets = self.make_targets(model)
        path = self.out / "hardened.pt"
        if resume and path.exists():
            saved = load_checkpoint(path)
            load_masked_state_dict(model, saved["state_dict"])
            self.history += saved["history"]
            return targets, name
        options = {k: v for k, v in prune.items() if k not in PRUNE_KEYS}
        try:
            method = methods.get(name, model, targets, **options)
        except ConfigError as exc:
            raise ConfigError(f"{self.recipe.where('prune', 'method')}: prune: {exc}") from exc
        config = stage_config(self.recipe, "prune", prune.get("train"))
        trainer = self.trainer(model, "prune", config, [method])
        method.bind(trainer.optimizer)
        history = trainer.fit(resume=resume)
        masks = method.harden()
        method.close()
        attach_masks(model, masks)
        method_history = [dict(h) for h in getattr(method, "history", [])]
        save_checkpoint({"state_dict": model.state_dict(), "history": history,
                         "method_history": method_history}, path)
        self.history += history
        return targets, name

    def retrain_stage(self, model: nn.Module, resume: bool) -> None:
        section = self.recipe["retrain"]
        if not section:
            return
        config = stage_config(self.recipe, "retrain", section)
        if config.epochs <= 0:
            return
        enforcer = MaskEnforcer(model, get_masks(model))
        trainer = self.trainer(model, "retrain", config, [enforcer])
        enforcer.bind(trainer.optimizer)
        self.history += trainer.fit(resume=resume)
        enforcer.close()

    def save_model(self, model: nn.Module, targets: list[Target], acc_dense: float,
                   acc: float) -> Path:
        m = self.recipe["model"]
        payload = {
            "format": MODEL_FORMAT,
            "model": {"name": m["name"], "kwargs": dict(m.get("kwargs") or {})},
            "input_shape": list(self.info.input_shape),
            "num_classes": self.info.num_classes,
            "state_dict": model.state_dict(),
            "recipe": self.recipe.to_yaml(),
            "accuracy": {"dense": acc_dense, "compressed": acc},
        }
        return save_checkpoint(payload, self.out / "model.pt")


def run_recipe(recipe: Recipe, out_dir: str | Path, *, resume: bool = False,
               progress: bool = True, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Execute ``recipe`` into ``out_dir`` and return its report."""
    report = Run(recipe, out_dir, progress=progress, echo=echo).run(resume=resume)
    echo(format_report(report))
    echo(f"results: {Path(out_dir).resolve()}")
    return report
