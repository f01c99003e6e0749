"""Run a recipe as a list of stages, each writing one artifact into the run directory.

    dense     -> dense.pt        dense training (or a given checkpoint)
    prune     -> pruned.pt       pruning method, then hardening into frozen constraints
    retrain   -> retrained.pt    retraining inside the constraints
    quantize  -> quantized.pt    quantization method (ADMM / ptq / ste), then hardening
    qretrain  -> qretrained.pt   quantized retraining (progressive fixing, STE or snap)
    export    -> model.pkz       the compact model file (dead channels zeroed first: exact)
    report    -> report.json     report.json / report.md / plots, measured on model.pkz

A stage runs only when the recipe asks for it. A checkpoint artifact holds the weights, the
frozen constraints and the history so far, so ``resume=True`` skips every finished stage by
loading its artifact and continues the unfinished one from its last per-epoch checkpoint
under ``ckpt/``; because the trainer reseeds every epoch from (seed, epoch), a resumed run
gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, methods, models
from . import data as datasets
from .constraints import Frozen, MaskEnforcer, Rounded
from .errors import ConfigError, DataError
from .io import CorruptFileError, atomic_write_text, load_checkpoint, remove_stale_temps, set_aside
from .methods.quantize import ProgressiveFixing
from .plan import PruneConfig, QuantizeConfig, check_fits_data, option_key, stage_settings
from .recipe import QUANT_RETRAIN_DEFAULTS, QUANT_RETRAIN_KEYS, Recipe
from .report import build_report, format_report, write_report
from .schemes import get as get_scheme
from .structure import dead_channel_counts, drop_dead_channels
from .targets import Target, Targets, resolve
from .training import TrainConfig, Trainer, distributed, evaluate, set_seed

#: keys of the prune / quantize sections that are not options of the method
PRUNE_KEYS = frozenset(PruneConfig.SECTION_KEYS)
QUANT_KEYS = frozenset(QuantizeConfig.SECTION_KEYS)

def stage_config(recipe: Recipe, where: tuple[str, ...],
                 overrides: Mapping[str, Any] | None) -> TrainConfig:
    """A stage's training settings: its own section, plus the shared settings of ``train``."""
    try:
        return TrainConfig.from_dict(stage_settings(recipe["train"], recipe["seed"], where,
                                                    overrides))
    except ConfigError as exc:
        raise recipe.locate(exc, *where) from None


@dataclass
class State:
    """What the stages hand on: the model, its frozen constraints, the history so far and
    small facts (``meta``: dense accuracy, the methods used)."""

    model: nn.Module
    constraints: dict[str, Frozen] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    artifact: str
    run: Callable[[State, bool], None]
    #: whether the artifact is a stage checkpoint that a resumed run loads
    checkpoint: bool = True


class Run:
    """One execution of a recipe into ``out_dir``."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, progress: bool = True,
                 echo: Callable[[str], Any] = print) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.progress = progress
        self.echo = echo
        self.report: dict[str, Any] | None = None
        self._teacher: nn.Module | None = None
        self.train_loader: Any = None  # built after the plan check (build_data)
        self.test_loader: Any = None

    # ------------------------------------------------------------------ setup
    def data_options(self) -> dict[str, Any]:
        d = self.recipe["data"]
        options = dict(d.get("options") or {})
        if datasets.is_synthetic(d["name"]):
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
        # under torchrun: this rank's share, the same global batches as one process
        self.train_loader = distributed.shard_loader(self.train_loader, train=True)
        self.test_loader = distributed.shard_loader(self.test_loader, train=False)

    def model_spec(self) -> dict[str, Any]:
        """How to rebuild the model: zoo name or factory, its arguments, the data's shape."""
        m = self.recipe["model"]
        return {"name": m["name"], "kwargs": dict(m.get("kwargs") or {}),
                "input_shape": list(self.info.input_shape), "num_classes": self.info.num_classes}

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.recipe["seed"])
        return models.build(self.model_spec())

    def trainer(self, model: nn.Module, stage: str, config: TrainConfig,
                plugins: list[Any]) -> Trainer:
        config.progress = self.progress and config.progress
        return Trainer(model, config, self.train_loader, self.test_loader, plugins=plugins,
                       checkpoint_path=self.out / "ckpt" / f"{stage}.pt", stage=stage,
                       teacher=self.teacher() if config.distill > 0 else None)

    def teacher(self) -> nn.Module:
        """The dense model (``dense.pt``, written by the dense stage before any stage that
        distills), the teacher of a stage with the train option ``distill``."""
        if self._teacher is None:
            teacher = self.build_model()
            teacher.load_state_dict(load_checkpoint(self.out / "dense.pt",
                                                    verified=True)["state_dict"])
            self._teacher = teacher
        return self._teacher

    def stages(self) -> list[Stage]:
        """The stages this recipe asks for, in order."""
        r = self.recipe
        quantize = r["quantize"] or {}
        found = [Stage("dense", "dense.pt", self.dense_stage)]
        if r["prune"] is not None:
            found.append(Stage("prune", "pruned.pt", self.prune_stage))
            if r["retrain"]:
                found.append(Stage("retrain", "retrained.pt", self.retrain_stage))
        if quantize:
            found.append(Stage("quantize", "quantized.pt", self.quantize_stage))
            if quantize.get("retrain"):
                found.append(Stage("qretrain", "qretrained.pt", self.qretrain_stage))
        found.append(Stage("export", "model.pkz", self.export_stage, checkpoint=False))
        found.append(Stage("report", "report.json", self.report_stage, checkpoint=False))
        return found

    # ------------------------------------------------------------------ driver
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run (or with ``resume``, continue) the recipe; under torchrun every rank calls
        this, rank 0 alone writes the run directory (see :mod:`.training.distributed`)."""
        with distributed.session(str(self.recipe["train"].get("device", "cpu"))):
            return self._run(resume)

    def say(self, message: str) -> None:
        if distributed.is_main():
            self.echo(message)

    def _run(self, resume: bool) -> dict[str, Any]:
        start = time.perf_counter()
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            if resume:
                remove_stale_temps(self.out)
            atomic_write_text(self.out / "recipe.yaml", self.recipe.to_yaml())
        set_seed(self.recipe["seed"])
        self.info = datasets.dataset_info(self.recipe["data"]["name"], **self.data_options())
        state = State(self.build_model())
        self.check_plan(state.model)
        self.build_data()
        if any((self.recipe[section] or {}).get("updates_per_epoch") is not None
               for section in ("prune", "quantize")):
            self.check_plan(state.model)  # again, with the loader's epoch length
        self.started = start
        for stage in self.stages():
            path = self.out / stage.artifact
            if resume and self.resume_stage(stage, path, state):
                continue
            stage.run(state, resume)
            if stage.checkpoint:
                self.check_ranks(state, f"the {stage.name} stage")
                if distributed.is_main():
                    self.save_stage(path, stage.name, state)
        assert self.report is not None
        return self.report

    def resume_stage(self, stage: Stage, path: Path, state: State) -> bool:
        """Take a finished stage's artifact instead of running the stage; False when there
        is none, or when it fails its check: such a file is set aside (``*.corrupt``) and
        the stage runs again, which gives the same result because every stage is
        deterministic. The report is always rebuilt from the model file."""
        if stage.name == "report" or not distributed.rank0_says(path.exists()):
            return False
        failed: DataError | None = None
        try:
            if stage.checkpoint:
                self.load_stage(path, stage.name, state)
            else:  # the model file: its CRC and manifest are checked on reading
                artifacts.load(path, model=self.build_model())
        except CorruptFileError as exc:
            failed = exc
        except DataError as exc:
            if stage.checkpoint:
                raise
            failed = exc
        if distributed.any_rank(failed is not None):
            if distributed.is_main():
                moved = set_aside(path)
                self.say(f"warning: {failed or path}; moved to {moved.name}, redoing stage "
                         f"{stage.name}")
            distributed.barrier()
            return False
        if stage.checkpoint:
            self.check_ranks(state, f"the resumed {stage.name} artifact")
        return True

    def check_ranks(self, state: State, when: str) -> None:
        """Every rank must hold the same weights and frozen constraints (masks, levels):
        compared across ranks after each stage, never assumed."""
        if distributed.active():
            distributed.check_identical(
                {"weights": state.model.state_dict(),
                 "constraints": {n: c.state_dict() for n, c in state.constraints.items()}},
                f"weights or frozen constraints after {when}")

    def check_plan(self, model: nn.Module) -> None:
        """Check the plan against the model before any data is loaded or anything trains,
        so a mistake in a late section is one error with its file, line and key at once:
        the model takes the data's inputs and gives one score per class (a forward pass on
        a meta-device twin: shapes only, no memory, no arithmetic), ``model.checkpoint``
        fits the model, every stage's targets resolve, and each method accepts its options
        (built on a copy, because some methods act on the weights when they start). The
        model is left as it was."""
        try:
            check_fits_data(model, self.info, self.recipe["model"]["name"],
                            self.recipe["model"]["input_shape"])
            self.start_weights(model)
            if self.recipe["prune"] is not None:
                targets = self.prune_targets(model)
                self.prune_method(model, targets, dry_run=True)
            if self.recipe["quantize"]:
                self.quantize_method(copy.deepcopy(model))
        except ConfigError as exc:
            raise self.recipe.locate(exc) from None

    def save_stage(self, path: Path, name: str, state: State) -> None:
        artifacts.save_stage(path, name, state.model, state.constraints, state.history,
                             state.meta)

    def load_stage(self, path: Path, name: str, state: State) -> None:
        state.constraints, state.history, state.meta = artifacts.load_stage(path, name,
                                                                            state.model)

    # ------------------------------------------------------------------ stages
    def start_weights(self, model: nn.Module) -> dict[str, Any] | None:
        """The weights of ``model.checkpoint`` (a state dict, bare or under
        ``"state_dict"``), checked key by key and shape by shape against ``model`` so that
        loading them cannot fail half way; None without a checkpoint."""
        m = self.recipe["model"]
        if not m.get("checkpoint"):
            return None
        loaded = load_checkpoint(m["checkpoint"])
        loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        try:
            artifacts.check_fits(loaded, model, m["checkpoint"])
        except DataError as exc:
            raise self.recipe.error(f"does not fit model {m['name']!r}: {exc}",
                                    "model", "checkpoint") from None
        return loaded

    def dense_stage(self, state: State, resume: bool) -> None:
        weights = self.start_weights(state.model)
        if weights is not None:
            state.model.load_state_dict(weights)
        else:
            config = stage_config(self.recipe, ("train",), None)
            if config.epochs > 0:
                state.history += self.trainer(state.model, "pretrain", config,
                                              []).fit(resume=resume)
        state.meta["accuracy_dense"] = evaluate(state.model, self.test_loader)["accuracy"]
        self.say(f"dense accuracy: {state.meta['accuracy_dense']:.4f}")

    def example(self) -> torch.Tensor:
        """One input of the data's shape: what ``group_filter`` rules trace the model on."""
        return torch.zeros(1, *self.info.input_shape)

    def prune_targets(self, model: nn.Module) -> Targets:
        try:
            return resolve(model, self.recipe["prune"]["targets"], example=self.example())
        except ConfigError as exc:
            raise self.recipe.locate(exc, "prune", "targets") from None

    def prune_method(self, model: nn.Module, targets: list[Target], *, dry_run: bool = False):
        prune = self.recipe["prune"]
        options = self.with_epoch_length(prune["method"], {k: v for k, v in prune.items()
                                                           if k not in PRUNE_KEYS})
        try:
            if dry_run:  # on a copy: some methods act on the weights when they start
                model = copy.deepcopy(model)
                targets = self.prune_targets(model)
            return methods.get(prune["method"], model, targets, **options)
        except ConfigError as exc:
            raise self.recipe.locate(exc, "prune", *option_key(exc, options)) from None

    def with_epoch_length(self, method: Any, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with ``steps_per_epoch`` filled in where ``updates_per_epoch`` needs
        it: the optimizer steps of one epoch of this rank's data loader, so a recipe says
        "n updates per epoch" on any data set. The plan check runs before the data is
        loaded and takes the smallest length the option allows; the stage itself, still
        before any training, takes the loader's."""
        if (options.get("updates_per_epoch") is None or "steps_per_epoch" in options
                or not isinstance(method, str) or method not in methods.METHODS
                or "updates_per_epoch" not in methods.options(method)):
            return options
        loader = self.train_loader
        steps = options["updates_per_epoch"] if loader is None else len(loader)
        return {**options, "steps_per_epoch": steps}

    def prune_stage(self, state: State, resume: bool) -> None:
        targets = self.prune_targets(state.model)
        notes = list(targets.summary.notes)
        for note in notes:  # channels a group_filter rule leaves alone, and why
            self.say(f"prune.targets: {note}")
        if notes:
            state.meta["prune_notes"] = notes
        method = self.prune_method(state.model, targets)
        config = stage_config(self.recipe, ("prune", "train"), self.recipe["prune"].get("train"))
        trainer = self.trainer(state.model, "prune", config, [method])
        method.bind(trainer.optimizer)
        state.history += trainer.fit(resume=resume)
        state.meta["prune_updates"] = copy.deepcopy(method.history)
        state.constraints.update(method.freeze())
        method.close()
        state.meta.setdefault("methods", []).append(self.recipe["prune"]["method"])

    def constrained_training(self, state: State, stage: str, section: Mapping[str, Any],
                             where: tuple[str, ...], resume: bool,
                             extra: Callable[[MaskEnforcer], list[Any]] | None = None) -> None:
        """Retrain inside the frozen constraints, then finish them (levels fixed)."""
        settings = {k: v for k, v in section.items() if k not in QUANT_RETRAIN_KEYS}
        config = stage_config(self.recipe, where, settings)
        if config.epochs <= 0 or not state.constraints:
            return
        enforcer = MaskEnforcer(state.model, state.constraints)
        plugins = [enforcer, *(extra(enforcer) if extra else [])]
        trainer = self.trainer(state.model, stage, config, plugins)
        enforcer.bind(trainer.optimizer)
        state.history += trainer.fit(resume=resume)
        enforcer.finish()
        state.constraints = enforcer.constraints
        enforcer.close()

    def retrain_stage(self, state: State, resume: bool) -> None:
        self.constrained_training(state, "retrain", self.recipe["retrain"], ("retrain",), resume)

    def quant_targets(self, model: nn.Module) -> list[Target]:
        """One ``quant`` target per selected layer with that layer's bits; by default the
        pruned layers (or every supported layer when nothing is pruned)."""
        q = self.recipe["quantize"]
        layers = q.get("layers")
        if layers is None and self.recipe["prune"] is not None:
            layers = sorted({m for t in self.prune_targets(model) for m in t.weight_layers})
        rule = {"layers": layers or "*", "scheme": "quant", "bits": 8}
        try:
            found = resolve(model, [rule])
            bits = methods.base.per_target(q.get("bits", 8), found, "quantize.bits")
            return [replace(t, scheme=get_scheme("quant", bits=int(b), scale=q.get("scale",
                    "layer"), levels=q.get("levels", "uniform")), sparsity=None)
                    for t, b in zip(found, bits, strict=True)]
        except ConfigError as exc:
            raise self.recipe.locate(exc, "quantize", *option_key(exc, q)) from None

    def quantize_method(self, model: nn.Module):
        q = self.recipe["quantize"]
        targets = self.quant_targets(model)
        name = q.get("method", "admm")
        options = self.with_epoch_length(name, {k: v for k, v in q.items()
                                                if k not in QUANT_KEYS})
        try:
            return methods.get(name, model, targets, **options)
        except ConfigError as exc:
            raise self.recipe.locate(exc, "quantize", *option_key(exc, options)) from None

    def quantize_stage(self, state: State, resume: bool) -> None:
        q = self.recipe["quantize"]
        method = self.quantize_method(state.model)
        config = stage_config(self.recipe, ("quantize", "train"), q.get("train") or {"epochs": 0})
        if config.epochs > 0:
            trainer = self.trainer(state.model, "quantize", config, [method])
            method.bind(trainer.optimizer)
            state.history += trainer.fit(resume=resume)
        mode = {**QUANT_RETRAIN_DEFAULTS, **(q.get("retrain") or {})}["mode"]
        frozen = method.constraints if method.hardened else method.freeze(mode=mode)
        method.close()
        params = dict(state.model.named_parameters())
        for name, constraint in frozen.items():
            constraint.finish_(params[name].data)
            constraint.start(mode)
            before = state.constraints.get(name)
            if before is not None:  # the pruning scheme's structure still indexes the layer
                constraint.hints = {**before.hints, **constraint.hints,
                                    "scheme": f"{before.hints.get('scheme', before.kind)}+quant"}
        state.constraints.update(frozen)
        if q.get("rest", "float32") != "float32":
            for name, param in params.items():
                if name not in state.constraints and param.dtype == torch.float32:
                    state.constraints[name] = Rounded(tuple(param.shape), q["rest"])
                    state.constraints[name].apply_(param.data)
        state.meta.setdefault("methods", []).append(f"quantize:{q.get('method', 'admm')}")

    def qretrain_stage(self, state: State, resume: bool) -> None:
        section = {**QUANT_RETRAIN_DEFAULTS, **self.recipe["quantize"]["retrain"]}
        config = stage_config(self.recipe, ("quantize", "retrain"),
                              {k: v for k, v in section.items() if k not in QUANT_RETRAIN_KEYS})

        def fixing(enforcer: MaskEnforcer) -> list[Any]:
            if section["mode"] != "progressive":
                return []
            return [ProgressiveFixing(enforcer, config.epochs, section["fix_fraction"])]

        self.constrained_training(state, "qretrain", section, ("quantize", "retrain"), resume,
                                  fixing)

    def export_stage(self, state: State, resume: bool) -> None:
        if state.constraints:  # exact: the outputs stay the same, the file gets smaller
            dropped = drop_dead_channels(state.model, state.constraints,
                                         torch.zeros(1, *self.info.input_shape))
            if dropped.channels:
                self.say(f"dead channels zeroed before export: "
                         f"{sum(dropped.channels.values())} "
                         f"({', '.join(f'{k}: {v}' for k, v in dropped.channels.items())})")
            elif dropped.note:
                self.say(f"dead channels kept: {dropped.note}")
        accuracy = evaluate(state.model, self.test_loader)["accuracy"]  # every rank's share
        if not distributed.is_main():
            distributed.barrier()  # the others read the file only once rank 0 has written it
            return
        artifacts.save(state.model, self.out / "model.pkz", state.constraints,
                       spec=self.model_spec(), recipe=self.recipe.to_yaml(),
                       meta={"accuracy_dense": state.meta.get("accuracy_dense"),
                             "accuracy_compressed": accuracy,
                             "methods": state.meta.get("methods", [])})
        distributed.barrier()

    def report_stage(self, state: State, resume: bool) -> dict[str, Any]:
        """The report of what ``model.pkz`` holds: the model, its constraints and every byte
        figure are read back from the file; its accuracy is the one the export measured on
        the weights it wrote (a loaded model's outputs equal them exactly). Rank 0 writes
        it; the other ranks of a distributed run receive the same report."""
        if distributed.active():
            report = distributed.broadcast_json(self._report(state) if distributed.is_main()
                                                else None)
            self.report = report
            return report
        return self._report(state)

    def _report(self, state: State) -> dict[str, Any]:
        loaded = artifacts.load(self.out / "model.pkz", model=self.build_model())
        accuracy = loaded.meta.get("accuracy_compressed")
        history = state.history
        dense = self.out / "dense.pt"
        before = (load_checkpoint(dense, verified=True)["state_dict"] if dense.exists() else {})
        example = torch.zeros(1, *self.info.input_shape)
        report = build_report(
            loaded.model, example, constraints=loaded.constraints,
            storage=loaded.storage, accuracy_dense=state.meta.get("accuracy_dense",
                                                                  loaded.meta.get("accuracy_dense")),
            accuracy_compressed=accuracy, method=" -> ".join(state.meta.get("methods", [])) or None,
            epochs=len(history), seconds=sum(r.get("seconds", 0.0) for r in history),
            history=history, updates=state.meta.get("prune_updates"),
            extra={"recipe": self.recipe["name"], "dataset": self.info.name,
                   "dead_channels": dead_channel_counts(loaded.model, example),
                   **({"prune_notes": state.meta["prune_notes"]}
                      if state.meta.get("prune_notes") else {}),
                   "model": self.recipe["model"]["name"], "file": "model.pkz",
                   "wall_seconds_this_invocation": time.perf_counter() - self.started},
        )
        params = dict(loaded.model.named_parameters())
        write_report(self.out, report, history=history,
                     weights_before={n: t for n, t in before.items() if n in params},
                     weights_after={n: p.detach() for n, p in params.items()})
        self.report = report
        return report


def run_recipe(recipe: Recipe, out_dir: str | Path, *, resume: bool = False,
               progress: bool = True, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Execute ``recipe`` into ``out_dir`` and return its report."""
    report = Run(recipe, out_dir, progress=progress, echo=echo).run(resume=resume)
    if distributed.is_main():
        echo(format_report(report))
        echo(f"results: {Path(out_dir).resolve()}")
    return report
