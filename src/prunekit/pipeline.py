"""Run a recipe as a list of stages, each writing one artifact into the run directory.

    dense     -> dense.pt        dense training (or a given checkpoint)
    prune     -> pruned.pt       pruning method, then hardening into frozen constraints
    oneshot   -> oneshot.pt      post-training compression layer by layer (calibration data)
    retrain   -> retrained.pt    retraining inside the constraints
    quantize  -> quantized.pt    quantization method (ADMM / ptq / ste), then hardening
    qretrain  -> qretrained.pt   quantized retraining (progressive fixing, STE or snap)
    export    -> model.pkz       the compact model file (dead channels zeroed first: exact)
    report    -> report.json     report.json / report.md / plots, measured on model.pkz

A pretrained Hugging Face model (``model.hf``, text data) is run by :class:`PretrainedRun`:
oneshot, export, ``hf -> model-hf/`` (a ``save_pretrained`` directory) and report, measured
by perplexity (or an encoder's embedding similarity) instead of accuracy.

A stage runs only when the recipe asks for it. A checkpoint artifact holds the weights, the
frozen constraints and the history so far, so ``resume=True`` skips every finished stage by
loading its artifact and continues the unfinished one from its last per-epoch checkpoint
under ``ckpt/``; because the trainer reseeds every epoch from (seed, epoch), a resumed run
gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, methods, models, oneshot
from . import data as datasets
from .constraints import Frozen, MaskEnforcer, Rounded
from .data import text
from .errors import ConfigError, DataError
from .files import (
    CorruptFileError,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temps,
    set_aside,
)
from .integrations import huggingface
from .methods.quantize import ProgressiveFixing
from .plan import Plan, check_fits_data
from .recipe import QUANT_RETRAIN_DEFAULTS, Recipe, parse_yaml
from .report import build_report, format_report, write_report
from .run_directory import PLAN_FILE, check_directory
from .schemes import get as get_scheme
from .structure import dead_channel_counts, drop_dead_channels
from .targets import Target, Targets, resolve
from .training import TrainConfig, Trainer, distributed, evaluate, set_seed

#: an ADMM stage whose last relative primal residual exceeds this hardened far from its
#: constraint set (converged runs end near 0.01; an unconverged one measured 1.43)
UNCONVERGED_RESIDUAL = 0.2


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
                 echo: Callable[[str], Any] = print, force: bool = False) -> None:
        self.recipe = recipe
        #: the checked, typed plan: every stage reads its settings from here
        self.plan: Plan = recipe.plan
        self.force = force
        self.out = Path(out_dir)
        self.progress = progress
        self.echo = echo
        self.report: dict[str, Any] | None = None
        self._teacher: nn.Module | None = None
        self.train_loader: Any = None  # built after the plan check (build_data)
        self._checked_targets: Targets | None = None  # the plan check's, on the dense model
        self._structure: Any = None  # the model's coupled channels, traced once per run
        self.test_loader: Any = None

    # ------------------------------------------------------------------ setup
    def data_options(self) -> dict[str, Any]:
        d = self.plan.data
        options = dict(d.options)
        if datasets.is_synthetic(d.name) and "input_shape" not in options:
            options["input_shape"] = list(self.input_shape_for_synthetic())
        return options

    def input_shape_for_synthetic(self) -> tuple[int, ...]:
        m = self.plan.model
        if m.input_shape:
            return tuple(m.input_shape)
        try:
            return tuple(models.default_input_shape(m.name, **m.kwargs))
        except ConfigError as exc:
            raise ConfigError(
                f"{self.recipe.where('model')}: model.input_shape is needed to make synthetic "
                f"data for {m.name!r}: {exc}"
            ) from exc

    def build_data(self) -> None:
        d = self.plan.data
        options = self.data_options()
        self.info = datasets.dataset_info(d.name, **options)
        self.train_loader, self.test_loader = datasets.get_loaders(
            d.name, root=d.root, batch_size=d.batch_size,
            test_batch_size=d.test_batch_size, download=d.download,
            seed=self.plan.seed, augment=d.augment, limit_train=d.limit_train,
            limit_test=d.limit_test, **options,
        )
        # under torchrun: this rank's share, the same global batches as one process
        self.train_loader = distributed.shard_loader(self.train_loader, train=True)
        self.test_loader = distributed.shard_loader(self.test_loader, train=False)

    def prepare(self) -> None:
        """What the plan check needs before the model is built: the data's shape and
        classes (no data is read)."""
        self.info = datasets.dataset_info(self.plan.data.name, **self.data_options())

    def model_spec(self) -> dict[str, Any]:
        """How to rebuild the model: zoo name or factory, its arguments, the data's shape."""
        m = self.plan.model
        return {"name": m.name, "kwargs": dict(m.kwargs),
                "input_shape": list(self.info.input_shape), "num_classes": self.info.num_classes}

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.plan.seed)
        return models.build(self.model_spec())

    def stage_config(self, where: tuple[str, ...]) -> TrainConfig:
        """A stage's checked training settings (its section plus what it inherits from
        ``train``, see :func:`prunekit.plan.stage_settings`), a copy the stage may adjust."""
        return replace(self.plan.stage_train(where))

    def trainer(self, model: nn.Module, stage: str, config: TrainConfig,
                plugins: list[Any]) -> Trainer:
        config.progress = self.progress and config.progress
        self.say(f"{stage}: {describe_settings(config)}")
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
        plan = self.plan
        found = [Stage("dense", "dense.pt", self.dense_stage)]
        if plan.prune is not None:
            found.append(Stage("prune", "pruned.pt", self.prune_stage))
        if plan.oneshot is not None:
            found.append(Stage("oneshot", "oneshot.pt", self.oneshot_stage))
        if plan.retrain and (plan.prune is not None or plan.oneshot is not None):
            found.append(Stage("retrain", "retrained.pt", self.retrain_stage))
        if plan.quantize is not None:
            found.append(Stage("quantize", "quantized.pt", self.quantize_stage))
            if plan.quantize.retrain:
                found.append(Stage("qretrain", "qretrained.pt", self.qretrain_stage))
        found.append(Stage("export", "model.pkz", self.export_stage, checkpoint=False))
        found.append(Stage("report", "report.json", self.report_stage, checkpoint=False))
        return found

    # ------------------------------------------------------------------ driver
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run (or with ``resume``, continue) the recipe; under torchrun every rank calls
        this, rank 0 alone writes the run directory (see :mod:`.training.distributed`)."""
        with distributed.session(str(self.plan.train.get("device", "cpu"))):
            return self._run(resume)

    def say(self, message: str) -> None:
        if distributed.is_main():
            self.echo(message)

    def _run(self, resume: bool) -> dict[str, Any]:
        start = time.perf_counter()
        # every rank reads the directory, so a refusal stops all of them alike
        note = check_directory(self.out, self.recipe.data, resume=resume, force=self.force,
                               read_plan=parse_yaml)
        distributed.barrier()
        if note:
            self.say(note)
        set_seed(self.plan.seed)
        self.prepare()
        state = State(self.build_model())
        self.check_plan(state.model)
        if distributed.is_main():  # recorded once the plan holds: a refused plan writes nothing
            self.out.mkdir(parents=True, exist_ok=True)
            if resume:
                remove_stale_temps(self.out)
            atomic_write_text(self.out / PLAN_FILE, self.recipe.to_yaml())
        self.build_data()
        if any(section is not None and section.options.get("updates_per_epoch") is not None
               for section in (self.plan.prune, self.plan.quantize)):
            self.check_plan(state.model)  # again, with the loader's epoch length
        self.started = start
        for stage in self.stages():
            path = self.out / stage.artifact
            if resume and self.resume_stage(stage, path, state):
                continue
            partial = self.out / "ckpt" / f"{stage.name}.pt"
            if resume and stage.checkpoint and partial.exists():
                self.say(f"resume: stage {stage.name} continues from its last epoch checkpoint "
                         f"({partial.relative_to(self.out)})")
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
            else:
                self.check_artifact(stage, path)
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
        self.say(f"resume: stage {stage.name} is finished ({path.name})")
        return True

    def check_artifact(self, stage: Stage, path: Path) -> None:
        """Raise a DataError unless the finished artifact of a stage without a checkpoint
        is whole: the model file, whose CRC and manifest are checked on reading."""
        artifacts.load(path, model=self.build_model())

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
        fits the model, every stage's targets resolve, and each method's options (checked
        when the plan was read) fit the resolved targets: no method is built, so the model
        is left as it was."""
        try:
            check_fits_data(model, self.info, self.plan.model.name,
                            self.plan.model.input_shape)
            self.start_weights(model)
            if self.plan.prune is not None:
                if self._checked_targets is None:  # resolved (and traced) once per run
                    self._checked_targets = self.prune_targets(model)
                self.check_options("prune", self._checked_targets)
            if self.plan.oneshot is not None:
                self.oneshot_targets(model)
            if self.plan.quantize is not None:
                self.check_options("quantize", self.quant_targets(model))
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
        m = self.plan.model
        if not m.checkpoint:
            return None
        loaded = load_checkpoint(Path(m.checkpoint).expanduser())
        loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        try:
            artifacts.check_fits(loaded, model, m.checkpoint)
        except DataError as exc:
            raise self.recipe.error(f"does not fit model {m.name!r}: {exc}",
                                    "model", "checkpoint") from None
        return loaded

    def dense_stage(self, state: State, resume: bool) -> None:
        weights = self.start_weights(state.model)
        if weights is not None:
            state.model.load_state_dict(weights)
        else:
            config = self.stage_config(("train",))
            if config.epochs > 0:
                state.history += self.trainer(state.model, "pretrain", config,
                                              []).fit(resume=resume)
        state.meta["accuracy_dense"] = evaluate(state.model, self.test_loader)["accuracy"]
        self.say(f"dense accuracy: {state.meta['accuracy_dense']:.4f}")
        self.record_accuracy(state, "dense", "end", state.meta["accuracy_dense"])

    def example(self) -> torch.Tensor:
        """One input of the data's shape: what ``group_filter`` rules trace the model on."""
        return torch.zeros(1, *self.info.input_shape)

    def prune_targets(self, model: nn.Module) -> Targets:
        try:
            targets = resolve(model, self.plan.prune.targets, example=self.example(),
                              structure=self._structure)
        except ConfigError as exc:
            raise self.recipe.locate(exc, "prune", "targets") from None
        self._structure = targets.structure
        return targets

    def oneshot_targets(self, model: nn.Module) -> list[Any]:
        """The oneshot section's targets, after everything one-shot compression checks
        before its first forward pass (rules, capturable layers, schemes the method
        solves), so a mistake is an error at the plan check, not after calibration."""
        o = self.plan.oneshot
        try:
            return oneshot.check(model, o.targets, o.method, example=self.example(),
                                 **o.options)[0]
        except ConfigError as exc:
            raise self.recipe.locate(exc, "oneshot", "targets") from None

    def calibration_batches(self, samples: int) -> list[torch.Tensor]:
        """The inputs of the first ``samples`` training examples (the loader's seeded order),
        in its batches: what one-shot compression solves each layer's problem on."""
        found, count = [], 0
        for x, _ in self.train_loader:
            found.append(x[: samples - count])
            count += len(found[-1])
            if count >= samples:
                break
        return found

    def oneshot_stage(self, state: State, resume: bool) -> None:
        """Post-training compression: every target solved layer by layer on calibration
        inputs, in forward order (:func:`prunekit.oneshot.compress`), into the same frozen
        constraints training-time hardening gives, so retraining, export and the report
        follow unchanged."""
        o = self.plan.oneshot
        batches = self.calibration_batches(o.calibration["samples"])
        self.say(f"oneshot: {o.method} on {sum(len(b) for b in batches)} calibration examples")
        self.compress(state, batches)
        self.record_accuracy(state, "oneshot", "after compression")

    def compress(self, state: State, batches: list[Any]) -> None:
        """The oneshot section's compression of ``state.model`` on ``batches``, its frozen
        constraints and per-layer records into ``state``."""
        if distributed.active():
            raise ConfigError("oneshot runs in one process: each torchrun rank would see other "
                              "calibration data; run it without torchrun")
        o = self.plan.oneshot
        try:
            result = oneshot.compress(state.model, batches, o.targets, o.method,
                                      progress=self.progress, example=self.example(),
                                      **o.options)
        except ConfigError as exc:
            raise self.recipe.locate(exc, "oneshot", "targets") from None
        state.constraints.update(result.constraints)
        state.meta["oneshot"] = {**result.summary(),
                                 "layers": [r.as_dict() for r in result.layers]}
        state.meta.setdefault("methods", []).append(f"oneshot:{o.method}")

    def method_options(self, section: str) -> methods.MethodOptions:
        """The options of a section's method, with ``steps_per_epoch`` filled in where
        ``updates_per_epoch`` needs it: the optimizer steps of one epoch of this rank's data
        loader, so a recipe says "n updates per epoch" on any data set. The plan check runs
        before the data is loaded and takes the smallest length the option allows; the stage
        itself, still before any training, takes the loader's."""
        options = getattr(self.plan, section).method_options
        n = getattr(options, "updates_per_epoch", None)
        if n is None or options.steps_per_epoch is not None:
            return options
        try:
            return replace(options, steps_per_epoch=n if self.train_loader is None
                           else len(self.train_loader))
        except ConfigError as exc:
            raise self.recipe.locate(exc, section) from None

    def check_options(self, section: str, targets: list[Any]) -> None:
        """The section's method options against its resolved targets (a layer an option
        names, a scheme the method cannot take), without building the method."""
        try:
            self.method_options(section).check_targets(targets)
        except ConfigError as exc:
            raise self.recipe.locate(exc, section, *(() if exc.key else ("method",))) from None

    def prune_method(self, model: nn.Module, targets: Targets):
        prune = self.plan.prune
        return methods.METHODS[prune.method](model, targets, self.method_options("prune"))

    def prune_stage(self, state: State, resume: bool) -> None:
        targets = self.prune_targets(state.model)
        notes = list(targets.summary.notes)
        for note in notes:  # channels a group_filter rule leaves alone, and why
            self.say(f"prune.targets: {note}")
        if notes:
            state.meta["prune_notes"] = notes
        method = self.prune_method(state.model, targets)
        config = self.stage_config(("prune", "train"))
        trainer = self.trainer(state.model, "prune", config, [method])
        method.bind(trainer.optimizer)
        state.history += trainer.fit(resume=resume)
        state.meta["prune_updates"] = copy.deepcopy(method.history)
        before = state.history[-1].get("test_accuracy") if state.history else None
        state.constraints.update(method.freeze())
        method.close()
        state.meta.setdefault("methods", []).append(self.plan.prune.method)
        after = self.record_accuracy(state, "prune", "after hardening")
        self.warn_unconverged(state, method.history, before, after)

    def record_accuracy(self, state: State, stage: str, when: str,
                        accuracy: float | None = None) -> float:
        """Measure (unless given) and record the test accuracy at a named moment of a
        stage: the log, report.json, report.md and training.png all show it."""
        if accuracy is None:
            accuracy = evaluate(state.model, self.test_loader)["accuracy"]
        state.meta.setdefault("stage_accuracy", []).append(
            {"stage": stage, "when": when, "accuracy": accuracy})
        if when != "end" or stage != "dense":
            self.say(f"{stage} accuracy {when}: {accuracy:.4f}")
        return accuracy

    def warn_unconverged(self, state: State, updates: list[dict[str, Any]],
                         before: float | None, after: float) -> None:
        """Say so, with what to change, when ADMM hardened far from its constraint set: its
        last relative primal residual above :data:`UNCONVERGED_RESIDUAL` (the weights were
        still that far from their projection, so hardening moved them that much)."""
        last = next((u for u in reversed(updates) if "relative_primal" in u), None)
        if last is None or last["relative_primal"] <= UNCONVERGED_RESIDUAL:
            return
        fell = (f"; accuracy {before:.4f} before hardening, {after:.4f} after"
                if before is not None else f"; accuracy after hardening {after:.4f}")
        text = (f"ADMM hardened before it converged: relative primal residual "
                f"{last['relative_primal']:.3g} at its last update (support change "
                f"{last.get('support_change', float('nan')):.3g}, where 2.0 means the whole "
                f"support moved){fell}. Give the prune stage more epochs "
                f"(prune.train.epochs), a larger rho (prune.rho), or rho_schedule: support, "
                f"which raises rho until the support settles")
        state.meta.setdefault("warnings", []).append(text)
        self.say(f"warning: {text}")

    def constrained_training(self, state: State, stage: str, where: tuple[str, ...],
                             resume: bool,
                             extra: Callable[[MaskEnforcer], list[Any]] | None = None) -> None:
        """Retrain inside the frozen constraints, then finish them (levels fixed)."""
        config = self.stage_config(where)
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
        self.constrained_training(state, "retrain", ("retrain",), resume)
        self.record_accuracy(state, "retrain", "end")

    def quant_targets(self, model: nn.Module) -> list[Target]:
        """One ``quant`` target per selected layer with that layer's bits; by default the
        pruned layers (or every supported layer when nothing is pruned)."""
        q = self.plan.quantize
        layers = q.layers
        if layers is None and (self.plan.prune or self.plan.oneshot) is not None:
            compressed = (self.prune_targets(model) if self.plan.prune is not None
                          else self.oneshot_targets(model))
            layers = sorted({m for t in compressed for m in t.weight_layers})
        rule = {"layers": layers or "*", "scheme": "quant", "bits": 8}
        try:
            found = resolve(model, [rule])
            bits = methods.base.per_target(q.bits, found, "quantize.bits", "bits")
            return [replace(t, scheme=get_scheme("quant", bits=int(b), scale=q.scale,
                                                 levels=q.levels), sparsity=None)
                    for t, b in zip(found, bits, strict=True)]
        except ConfigError as exc:
            raise self.recipe.locate(exc, "quantize", *(() if exc.key else ("layers",))) \
                from None

    def quantize_method(self, model: nn.Module):
        targets = self.quant_targets(model)
        return methods.METHODS[self.plan.quantize.method](model, targets,
                                                          self.method_options("quantize"))

    def quantize_stage(self, state: State, resume: bool) -> None:
        q = self.plan.quantize
        method = self.quantize_method(state.model)
        config = self.stage_config(("quantize", "train"))
        if config.epochs > 0:
            trainer = self.trainer(state.model, "quantize", config, [method])
            method.bind(trainer.optimizer)
            state.history += trainer.fit(resume=resume)
        mode = {**QUANT_RETRAIN_DEFAULTS, **(q.retrain or {})}["mode"]
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
        if q.rest != "float32":
            for name, param in params.items():
                if name not in state.constraints and param.dtype == torch.float32:
                    state.constraints[name] = Rounded(tuple(param.shape), q.rest)
                    state.constraints[name].apply_(param.data)
        state.meta.setdefault("methods", []).append(f"quantize:{q.method}")
        self.record_accuracy(state, "quantize", "after hardening")

    def qretrain_stage(self, state: State, resume: bool) -> None:
        section = {**QUANT_RETRAIN_DEFAULTS, **self.plan.quantize.retrain}
        config = self.stage_config(("quantize", "retrain"))

        def fixing(enforcer: MaskEnforcer) -> list[Any]:
            if section["mode"] != "progressive":
                return []
            return [ProgressiveFixing(enforcer, config.epochs, section["fix_fraction"])]

        self.constrained_training(state, "qretrain", ("quantize", "retrain"), resume, fixing)
        self.record_accuracy(state, "qretrain", "end")

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
                             "stage_accuracy": state.meta.get("stage_accuracy", []),
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
            extra={"recipe": self.plan.name, "dataset": self.info.name,
                   "stage_accuracy": state.meta.get("stage_accuracy", []),
                   **({"oneshot": state.meta["oneshot"]} if state.meta.get("oneshot") else {}),
                   **({"warnings": state.meta["warnings"]} if state.meta.get("warnings")
                      else {}),
                   "dead_channels": dead_channel_counts(loaded.model, example),
                   **({"prune_notes": state.meta["prune_notes"]}
                      if state.meta.get("prune_notes") else {}),
                   "model": self.plan.model.name, "file": "model.pkz",
                   "wall_seconds_this_invocation": time.perf_counter() - self.started},
        )
        params = dict(loaded.model.named_parameters())
        write_report(self.out, report, history=history,
                     weights_before={n: t for n, t in before.items() if n in params},
                     weights_after={n: p.detach() for n, p in params.items()})
        self.report = report
        return report


class PretrainedRun(Run):
    """A recipe whose model is a pretrained Hugging Face model (``model.hf``) on text data
    (``data.name: text``). Nothing is trained: the model is loaded (float32, never from
    the network), measured, compressed by the oneshot section on text calibration windows
    and measured again, then written twice, as ``model.pkz`` (which records the model's
    config, so prunekit rebuilds it without the source weights) and as ``model-hf/``, a
    ``save_pretrained`` directory transformers loads. A causal LM is measured by its
    perplexity on the evaluation windows (lower is better); an encoder by the mean cosine
    similarity of its mean-pooled sentence embeddings to the dense model's."""

    #: the save_pretrained directory of the compressed model in the run directory
    HF_DIR = "model-hf"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: huggingface.Pretrained | None = None
        self.text: dict[str, Any] = {}

    def prepare(self) -> None:
        self.info = None  # text has no fixed input shape or classes

    def build_model(self) -> nn.Module:
        """The pretrained model; loaded once per run, with its tokenizer (a model file is
        read back into the architecture it records, not into this)."""
        if self.loaded is None:
            m = self.plan.model
            self.loaded = huggingface.load(Path(m.hf).expanduser(), causal_lm=m.causal_lm)
        return self.loaded.model

    @property
    def metric(self) -> str:
        """What measures the model: ``perplexity`` (causal LM) or ``similarity``."""
        return "perplexity" if self.loaded.causal_lm else "similarity"

    def model_spec(self) -> dict[str, Any]:
        """How a model file rebuilds the model: its config (no weights), see
        :func:`prunekit.integrations.huggingface.architecture`."""
        arch = huggingface.architecture(self.loaded.model, self.loaded.causal_lm)
        kinds = arch["config"].get("architectures") or [arch["config"]["model_type"]]
        return {"name": str(kinds[0]), "huggingface": arch, "seq_len": self.plan.data.seq_len}

    def check_plan(self, model: nn.Module) -> None:
        """The targets against the loaded model (rules, capturable layers, schemes the
        method solves), before any text is read."""
        try:
            self.oneshot_targets(model)
        except ConfigError as exc:
            raise self.recipe.locate(exc) from None

    def example(self) -> None:
        return None  # a transformer is not traced: group_filter rules do not apply

    def build_data(self) -> None:
        """Tokenize the calibration and evaluation files and cut their windows (the text
        shorter than one window is an error here, before any stage runs)."""
        d, cal = self.plan.data, self.plan.oneshot.calibration
        tokenizer = self.loaded.tokenizer
        calibration = text.tokenize_files(tokenizer, d.files["calibration"])
        evaluation = text.tokenize_files(tokenizer, d.files["evaluation"])
        self.text = {
            "files": {"calibration": calibration.files, "evaluation": evaluation.files},
            "calibration": text.calibration_windows(calibration, cal["samples"],
                                                    cal["seq_len"], cal["seed"]),
            "evaluation": text.evaluation_windows(evaluation, d.seq_len, d.eval_tokens),
        }
        self.say(f"text: {calibration.ids.numel()} calibration tokens from "
                 f"{len(calibration.files)} files, {evaluation.ids.numel()} evaluation "
                 f"tokens from {len(evaluation.files)} files "
                 f"({self.text['evaluation'].numel()} evaluated)")

    def stages(self) -> list[Stage]:
        return [Stage("oneshot", "oneshot.pt", self.oneshot_stage),
                Stage("export", "model.pkz", self.export_stage, checkpoint=False),
                Stage("hf", self.HF_DIR, self.hf_stage, checkpoint=False),
                Stage("report", "report.json", self.report_stage, checkpoint=False)]

    def check_artifact(self, stage: Stage, path: Path) -> None:
        if stage.name == "hf":  # moved into place whole, or not at all
            if not (path / "config.json").is_file():
                raise DataError(f"{path} has no config.json")
            return
        artifacts.load(path)  # rebuilt from the architecture the file records

    def measure(self, model: nn.Module, reference: torch.Tensor | None = None) -> float:
        """Perplexity on the evaluation windows, or (encoder) the embeddings' similarity to
        ``reference``, the dense model's."""
        windows, batch = self.text["evaluation"], self.plan.data.batch_size
        if self.loaded.causal_lm:
            return text.perplexity(model, windows, batch_size=batch)
        return text.embedding_similarity(reference, text.mean_pooled(model, windows,
                                                                     batch_size=batch))

    def record_quality(self, state: State, stage: str, when: str, value: float) -> None:
        """Record (``meta["quality"]``: the model file, report.json, report.md) and log the
        metric at a named moment; the first moment is the dense model's."""
        quality = state.meta.setdefault("quality", {"metric": self.metric, "stages": []})
        quality["stages"].append({"stage": stage, "when": when, self.metric: value})
        quality["dense" if stage == "dense" else "compressed"] = value
        label = ("perplexity (lower is better)" if self.metric == "perplexity"
                 else "embedding similarity to the dense model")
        self.say(f"{stage} {label} {when}: {value:.4f}")

    def oneshot_stage(self, state: State, resume: bool) -> None:
        o, windows = self.plan.oneshot, self.text["calibration"]
        reference = None
        if self.loaded.causal_lm:
            self.record_quality(state, "dense", "before compression", self.measure(state.model))
        else:
            reference = text.mean_pooled(state.model, self.text["evaluation"],
                                         batch_size=self.plan.data.batch_size)
            self.record_quality(state, "dense", "before compression", 1.0)
        self.say(f"oneshot: {o.method} on {windows.shape[0]} calibration windows of "
                 f"{windows.shape[1]} tokens")
        self.compress(state, text.as_batches(windows, self.plan.data.batch_size))
        self.record_quality(state, "oneshot", "after compression",
                            self.measure(state.model, reference))

    def export_stage(self, state: State, resume: bool) -> None:
        artifacts.save(state.model, self.out / "model.pkz", state.constraints,
                       spec=self.model_spec(), recipe=self.recipe.to_yaml(),
                       meta={"quality": state.meta.get("quality"),
                             "methods": state.meta.get("methods", []),
                             "text": self.text["files"]})

    def hf_stage(self, state: State, resume: bool) -> None:
        """The compressed model as a ``save_pretrained`` directory (dense tensors holding
        their zeros), with the tokenizer: what transformers and its tools load."""
        written = huggingface.save(state.model, self.loaded.tokenizer, self.out / self.HF_DIR)
        self.say(f"Hugging Face directory: {written}")

    def _report(self, state: State) -> dict[str, Any]:
        """The report of ``model.pkz`` read back into the architecture it records; MACs are
        per token (the example is one token)."""
        loaded = artifacts.load(self.out / "model.pkz")
        summary = (state.meta.get("oneshot") or {})
        report = build_report(
            loaded.model, {"input_ids": torch.zeros(1, 1, dtype=torch.long)},
            constraints=loaded.constraints, storage=loaded.storage,
            quality=loaded.meta.get("quality") or state.meta.get("quality"),
            method=" -> ".join(state.meta.get("methods", [])) or None, epochs=0,
            seconds=summary.get("seconds"),
            extra={"recipe": self.plan.name, "dataset": "text",
                   "text": loaded.meta.get("text") or self.text.get("files"),
                   **({"oneshot": summary} if summary else {}),
                   "model": self.plan.model.hf, "macs_per": "token", "file": "model.pkz",
                   "hf_directory": self.HF_DIR,
                   "wall_seconds_this_invocation": time.perf_counter() - self.started})
        params = dict(loaded.model.named_parameters())
        write_report(self.out, report,
                     weights_after={n: params[n].detach() for n in loaded.constraints})
        self.report = report
        return report


def describe_settings(config: TrainConfig) -> str:
    """A stage's resolved training settings in one line (printed when the stage starts, so
    what a stage inherited and what it defaulted to is never a guess)."""
    shown = ["epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
             "warmup_epochs", "label_smoothing", "grad_clip", "distill", "seed", "device"]
    values = {k: getattr(config, k) for k in shown}
    if config.optimizer != "sgd":
        values.pop("momentum")
        values.pop("nesterov")
    if not config.distill:
        values.pop("distill")
    return " ".join(f"{k}={v}" for k, v in values.items())


def run_recipe(recipe: Recipe, out_dir: str | Path, *, resume: bool = False,
               progress: bool = True, echo: Callable[[str], Any] = print,
               force: bool = False) -> dict[str, Any]:
    """Execute ``recipe`` into ``out_dir`` and return its report. A directory holding
    another run is refused unless ``resume`` (with the same plan) or ``force``."""
    kind = PretrainedRun if recipe.plan.pretrained else Run
    report = kind(recipe, out_dir, progress=progress, echo=echo, force=force).run(resume=resume)
    if distributed.is_main():
        echo(format_report(report))
        echo(f"results: {Path(out_dir).resolve()}")
    return report
