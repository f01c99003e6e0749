"""The plan: a recipe as typed, versioned configs, every value checked in one place.

A recipe's sections become dataclasses (:class:`ModelConfig`, :class:`DataConfig`,
:class:`PruneConfig`, :class:`QuantizeConfig`, one :class:`~prunekit.training.TrainConfig`
per training stage) whose ``__post_init__`` checks what can be checked without a model:
unknown keys, wrong types, rates outside [0, 1), schemes and their options, method options,
a user's data function and its arguments. What needs the model (layer names, a scheme that
does not fit a layer's shape, a method option naming a layer) is checked by
:meth:`prunekit.pipeline.Run.check_plan` before the first epoch.

Each check raises a :class:`~prunekit.errors.ConfigError` carrying the key path it is about,
so :mod:`prunekit.recipe`, which knows the file, reports ``file:line: key: message``.
``Plan.from_dict(plan.to_dict())`` gives the same plan; ``to_dict`` is what a run directory's
``recipe.yaml`` holds. ``version`` is the plan format: a file written for a later format is
refused rather than half understood.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from . import data as datasets
from . import methods, oneshot, schemes, validate
from .data import text as text_data
from .errors import ConfigError, within
from .factories import check_kwargs, import_factory, is_factory_spec
from .integrations import huggingface
from .targets import check_rule
from .training import TrainConfig

PLAN_VERSION = 1

#: settings a pruning or retraining stage takes from the recipe's ``train`` section; the
#: optimizer and schedule are the stage's own (an Adam stage must not inherit SGD's nesterov)
INHERITED = ("seed", "device", "progress", "label_smoothing", "grad_clip", "on_nan",
             "memory_format")

#: methods of the ``quantize`` section, and the keys of its ``retrain`` that are not
#: training settings (how quantized retraining moves weights between levels)
QUANT_METHODS = ("admm", "ptq", "ste")
QUANT_RETRAIN_DEFAULTS: dict[str, Any] = {"mode": "progressive", "fix_fraction": 0.3}
QUANT_RETRAIN_KEYS = frozenset(QUANT_RETRAIN_DEFAULTS)
QUANT_REST = ("float32", "float16", "bfloat16")

#: sections that were accepted once and read by nothing; naming what to use instead
REMOVED_SECTIONS = {
    "eval": "evaluation batches are data.test_batch_size",
}


# ------------------------------------------------------------------ value checks
def _expect(value: Any, key: str, kinds: tuple[type, ...], what: str) -> None:
    """``value`` (unless None) is one of ``kinds``; booleans only where ``bool`` is listed."""
    validate.kind(value, kinds, what, key, optional=True)


def _positive(value: Any, key: str) -> None:
    validate.integer(value, key, bounds="> 0", optional=True)


def _known_keys(given: Iterable[Any], allowed: Sequence[str], section: str) -> None:
    validate.known_keys(given, allowed, where=section)


_mapping = validate.mapping


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts: what YAML and ``weights_only`` files hold."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, value: Any, section: str) -> Any:
    """``cls(**value)`` for a section mapping whose keys are exactly ``cls``'s fields; a
    bare name (``model: mymodels:cnn``) is refused with the mapping it should be."""
    if isinstance(value, str) and "name" in {f.name for f in fields(cls)}:
        keys = ", ".join(f.name for f in fields(cls))
        raise ConfigError(f"must be a mapping, got the string {value!r}; write it as "
                          f"'{section}: {{name: {value}}}' ({section} keys: {keys}; see "
                          f"docs/own-model.md)")
    value = _mapping({} if value is None else value)
    _known_keys(value, [f.name for f in fields(cls)], section)
    return cls(**value)


# ------------------------------------------------------------------ method options
def method_options(method: Any, options: Mapping[str, Any], section: str
                   ) -> methods.MethodOptions:
    """A known method and its options, built and checked (the method's
    :class:`~prunekit.methods.MethodOptions`); what only the targets can tell is checked
    against the resolved targets when the plan is checked against the model."""
    if not method:
        raise ConfigError("is required (e.g. admm, reweighted, gradual)", key=("method",))
    with within("method"):
        if not isinstance(method, str) or method not in methods.METHODS:
            raise ConfigError(f"unknown method {method!r}; available: "
                              f"{', '.join(methods.available())}")
    return methods.METHODS[method].Options.build(
        options, where=f"{section} with method {method!r}", noun="key")


# ------------------------------------------------------------------ the model
def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose parameters and buffers are on the meta
    device, made without copying a single value: each tensor is replaced by an empty meta
    tensor of its shape while the modules are copied (tied weights stay tied)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                   requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo).eval()


def check_fits_data(model: nn.Module, info: datasets.DatasetInfo, name: str,
                    input_shape: Sequence[int] | None = None) -> None:
    """The model takes the data's inputs and scores its classes: one forward pass of a
    :func:`meta_twin` (shapes only: no weight is copied and nothing is computed, so it
    costs next to nothing even for a large model), which turns a mismatch into one error
    before any training instead of a shape error from deep inside torch at the first batch.
    A model whose forward pass cannot run on the meta device is not checked here.
    ``input_shape`` (the recipe's ``model.input_shape``) must be the data's, since the
    data's shape is the one used."""
    if input_shape is not None and tuple(input_shape) != tuple(info.input_shape):
        raise ConfigError(f"is {list(input_shape)}, but the examples of data {info.name!r} "
                          f"are {list(info.input_shape)} (it is only needed to size synthetic "
                          f"data)", key=("model", "input_shape"))
    twin = meta_twin(model)
    try:
        with torch.no_grad():
            out = twin(torch.zeros(2, *info.input_shape, device="meta"))
    except ConfigError as exc:
        raise ConfigError(f"model {name!r} does not fit data {info.name!r}: {exc.message}",
                          key=("model", "name")) from None
    except (NotImplementedError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        if "meta" in str(exc).lower():
            return  # an operation without a meta kernel: nothing can be concluded
        raise ConfigError(
            f"model {name!r} does not take the inputs of data {info.name!r} (one example is "
            f"{list(info.input_shape)}): {type(exc).__name__}: {str(exc).splitlines()[0]}",
            key=("model", "name")) from None
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] != info.num_classes:
        raise ConfigError(
            f"model {name!r} gives {out.shape[1]} scores per example but data {info.name!r} "
            f"has {info.num_classes} classes (set the model's class count in model.kwargs)",
            key=("model", "name"))


# ------------------------------------------------------------------ sections
def _with_options(cls: type, d: Any) -> Any:
    """A method's section: its own keys (``cls.SECTION_KEYS``), and every other key an
    option of the method."""
    d = _mapping(d)
    own = {k: d[k] for k in cls.SECTION_KEYS if k in d}
    return cls(**own, options={k: v for k, v in d.items() if k not in cls.SECTION_KEYS})


@dataclass
class ModelConfig:
    """``model``: a zoo name or a ``module:function`` factory, its arguments, and optionally
    a dense checkpoint to start from and the per-sample input shape; or a pretrained
    Hugging Face model, ``hf``: a ``save_pretrained`` directory or a ``.gguf`` file (with
    ``causal_lm`` to force the head choice), which is named by its path alone."""

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    input_shape: list[int] | None = None
    hf: str | None = None
    causal_lm: bool | None = None

    def __post_init__(self) -> None:
        self.kwargs = {} if self.kwargs is None else self.kwargs  # ``kwargs:`` left empty
        if self.hf is not None:
            self._check_hf()
            return
        if self.causal_lm is not None:
            raise ConfigError("applies only to a Hugging Face model (model.hf)",
                              key=("causal_lm",))
        if not self.name:
            raise ConfigError("is required (a zoo name or 'module:function', or hf: a "
                              "Hugging Face model directory)", key=("name",))
        _expect(self.name, "name", (str,), "a string")
        _expect(self.kwargs, "kwargs", (dict,), "a mapping")
        _expect(self.checkpoint, "checkpoint", (str,), "a path")
        if self.input_shape is not None:
            with within("input_shape"):
                self.input_shape = list(datasets.info.parse_shape(self.input_shape))

    def _check_hf(self) -> None:
        """The path names a model transformers can load (nothing is loaded yet) and the
        keys of a zoo or factory model are absent: a pretrained model brings its
        architecture and weights."""
        _expect(self.hf, "hf", (str,), "a path (a save_pretrained directory or a .gguf file)")
        for key, given in (("name", self.name is not None), ("kwargs", bool(self.kwargs)),
                           ("checkpoint", self.checkpoint is not None),
                           ("input_shape", self.input_shape is not None)):
            if given:
                raise ConfigError("cannot be given with model.hf: a Hugging Face model brings "
                                  "its own architecture and weights (remove one of the two)",
                                  key=(key,))
        _expect(self.causal_lm, "causal_lm", (bool,), "true or false")
        with within("hf"):
            huggingface.require()
            huggingface.check_path(self.hf)

    def to_dict(self) -> dict[str, Any]:
        """The section's keys; a Hugging Face model's alone, and only those of the other
        kinds otherwise, so a recorded plan reads like the recipe."""
        hf_keys = ("hf", "causal_lm")
        keys = [f.name for f in fields(self)
                if (f.name in hf_keys) == (self.hf is not None)]
        return _plain({k: getattr(self, k) for k in keys})


@dataclass
class DataConfig:
    """``data``: a built-in data set (``fashion_mnist``, ``mnist``, ``kmnist``, ``cifar10``,
    ``cifar100``, ``synthetic``) or a user's ``module:function`` (see
    :mod:`prunekit.data.user`), and how it is batched. ``options`` are the data set's
    options, or the keyword arguments of the user's function."""

    name: str | None = None
    root: str | None = None
    batch_size: int = 128
    test_batch_size: int = 1000
    download: bool = False
    augment: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("is required (e.g. fashion_mnist, mnist, cifar10, synthetic, text, "
                              "or module:function)", key=("name",))
        _expect(self.name, "name", (str,), "a string")
        _expect(self.root, "root", (str,), "a directory path")
        for key in ("batch_size", "test_batch_size", "limit_train", "limit_test"):
            _positive(getattr(self, key), key)
        for key in ("download", "augment"):
            _expect(getattr(self, key), key, (bool,), "true or false")
        self.options = {} if self.options is None else self.options  # ``options:`` left empty
        _expect(self.options, "options", (dict,), "a mapping")
        if is_factory_spec(self.name):
            self._check_user_function()
        else:
            self._check_builtin()

    def _check_builtin(self) -> None:
        with within("name"):
            name = datasets.canonical_name(self.name)
        with within("options"):
            datasets.dataset_info(name, **self.options)
        if self.augment and not datasets.info.is_cifar(name):
            raise ConfigError(f"is defined for cifar10/cifar100 only, not {name!r}",
                              key=("augment",))

    def _check_user_function(self) -> None:
        """A user's function is imported and its arguments checked now; it is called (and
        what it returns is checked) when the plan is checked against the model."""
        for key, meaningless in (("root", self.root is not None), ("download", self.download),
                                 ("augment", self.augment)):
            if meaningless:
                raise ConfigError(f"does not apply to data from a function ({self.name}); "
                                  f"pass what it needs in data.options", key=(key,))
        with within("name"):
            function = import_factory(self.name, "data function")
        with within("options"):
            check_kwargs(f"data function {self.name!r}", function, self.options)


@dataclass
class TextDataConfig:
    """``data: {name: text}``: local text for a Hugging Face model, ``calibration`` and
    ``evaluation`` (each a list of ``.txt`` / ``.jsonl`` files or globs, disjoint), cut into
    windows of ``seq_len`` tokens (evaluation: consecutive windows of at most
    ``eval_tokens`` tokens, all by default), run ``batch_size`` windows at a time. The files
    are found and compared now; they are tokenized when the run starts
    (:mod:`prunekit.data.text`)."""

    NAME: ClassVar[str] = "text"

    name: str = NAME
    calibration: list[str] | None = None
    evaluation: list[str] | None = None
    seq_len: int = 512
    eval_tokens: int | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        for key in ("calibration", "evaluation"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ConfigError("must be a non-empty list of .txt / .jsonl files or globs",
                                  key=(key,))
            setattr(self, key, value)
        for key in ("seq_len", "eval_tokens", "batch_size"):
            _positive(getattr(self, key), key)
        if self.eval_tokens is not None and self.eval_tokens < self.seq_len:
            raise ConfigError(f"is {self.eval_tokens}, less than one window (seq_len "
                              f"{self.seq_len})", key=("eval_tokens",))
        with within("calibration"):
            calibration = text_data.expand_files(self.calibration)
        with within("evaluation"):
            evaluation = text_data.expand_files(self.evaluation)
            text_data.check_disjoint(calibration, evaluation)
        #: the files the globs found, in order (not part of the plan: the globs are)
        self.files = {"calibration": calibration, "evaluation": evaluation}


def _data_class(value: Any) -> type:
    """The data section's class: text data has keys of its own, which another data set
    refuses by saying whose they are."""
    if not isinstance(value, Mapping):
        return DataConfig
    if value.get("name") == TextDataConfig.NAME:
        return TextDataConfig
    own = {f.name for f in fields(DataConfig)}
    for key in value:
        if key not in own and key in {f.name for f in fields(TextDataConfig)}:
            raise ConfigError(f"is a key of text data (data.name: text, for a Hugging Face "
                              f"model), not of data {value.get('name')!r}", key=(str(key),))
    return DataConfig


@dataclass
class PruneConfig:
    """``prune``: the method, its options (every other key of the section), the target rules
    and the stage's training settings (checked as a :class:`TrainConfig` by :class:`Plan`)."""

    SECTION_KEYS: ClassVar[tuple[str, ...]] = ("method", "targets", "train")

    method: str | None = None
    targets: list[dict[str, Any]] | None = None
    train: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the options, built and checked
    method_options: methods.MethodOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.method_options = method_options(self.method, self.options, "prune")
        if not isinstance(self.targets, list) or not self.targets:
            raise ConfigError("must be a non-empty list of target rules", key=("targets",))
        with within("targets"):
            for index, rule in enumerate(self.targets):
                check_rule(rule, index)
        _expect(self.train, "train", (dict,), "a mapping")

    @classmethod
    def from_dict(cls, d: Any) -> PruneConfig:
        return _with_options(cls, d)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, **_plain(self.options)}
        if self.train is not None:
            out["train"] = _plain(self.train)
        out["targets"] = _plain(self.targets)
        return out


@dataclass
class OneshotConfig:
    """``oneshot``: post-training compression of the model's weights (``model.checkpoint``,
    or the dense stage's result) layer by layer from calibration inputs, in place of a
    training-time ``prune`` section: the method (``admm``, ``sparsegpt``, ``wanda``,
    ``magnitude``; :mod:`prunekit.oneshot`), its options (every other key), the target
    rules, and ``calibration: {samples: N}``, the first N training examples (with text data:
    N windows of ``seq_len`` tokens, default ``data.seq_len``, drawn at random starts with
    ``seed``, default the recipe's). ``retrain`` after it is the optional refinement inside
    the frozen constraints."""

    SECTION_KEYS: ClassVar[tuple[str, ...]] = ("method", "targets", "calibration")
    CALIBRATION_DEFAULTS: ClassVar[dict[str, Any]] = {"samples": 128}
    #: calibration keys that only text data reads
    TEXT_CALIBRATION_KEYS: ClassVar[tuple[str, ...]] = ("seq_len", "seed")

    method: str = "admm"
    targets: list[dict[str, Any]] | None = None
    calibration: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        with within("method"):
            if not isinstance(self.method, str) or self.method not in oneshot.METHODS:
                raise ConfigError(f"unknown one-shot method {self.method!r}; available: "
                                  f"{', '.join(oneshot.METHODS)}")
        valid = list(oneshot.OPTIONS[self.method])
        _known_keys(self.options, [*valid, *self.SECTION_KEYS],
                    f"oneshot with method {self.method!r}")
        try:
            oneshot.check_method(self.method, self.options)
        except ConfigError as exc:
            key = next((k for k in self.options if repr(k) in exc.message), "method")
            raise ConfigError(exc.message, key=(key,)) from None
        if not isinstance(self.targets, list) or not self.targets:
            raise ConfigError("must be a non-empty list of target rules", key=("targets",))
        with within("targets"):
            for index, rule in enumerate(self.targets):
                check_rule(rule, index)
        given = {} if self.calibration is None else _mapping(self.calibration, "calibration")
        with within("calibration"):
            _known_keys(given, [*self.CALIBRATION_DEFAULTS, *self.TEXT_CALIBRATION_KEYS],
                        "oneshot.calibration")
            _positive(given.get("samples"), "samples")
            _positive(given.get("seq_len"), "seq_len")
            _expect(given.get("seed"), "seed", (int,), "an integer")
            if given.get("seed") is not None and given["seed"] < 0:
                raise ConfigError(f"must be a non-negative integer, got {given['seed']}",
                                  key=("seed",))
        self.calibration = {**self.CALIBRATION_DEFAULTS, **given}

    @classmethod
    def from_dict(cls, d: Any) -> OneshotConfig:
        return _with_options(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **_plain(self.options),
                "calibration": _plain(self.calibration), "targets": _plain(self.targets)}


@dataclass
class QuantizeConfig:
    """``quantize``: method (``admm``, ``ptq``, ``ste``) and its options, bits (one number
    or ``{layer: bits}``), the level set, which layers (default: the pruned ones), the
    storage of the other weights, and the training and retraining settings."""

    SECTION_KEYS: ClassVar[tuple[str, ...]] = (
        "method", "bits", "scale", "levels", "layers", "rest", "train", "retrain")

    method: str = "admm"
    bits: int | dict[str, int] = 8
    scale: str = "layer"
    levels: str = "uniform"
    layers: str | list[str] | None = None
    rest: str = "float32"
    train: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the method's options, built and checked
    method_options: methods.MethodOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .constraints import QUANT_MODES  # noqa: PLC0415  (torch only when quantizing)

        validate.choice(self.method, "method", choices=QUANT_METHODS)
        self.method_options = method_options(self.method, self.options, "quantize")
        with within("bits"):
            bits = self.bits.values() if isinstance(self.bits, Mapping) else [self.bits]
            for b in bits:  # the level set of every bit width, without a model
                schemes.get("quant", bits=b, scale=self.scale, levels=self.levels)
        if self.layers is not None and not (
                isinstance(self.layers, str)
                or isinstance(self.layers, list) and all(isinstance(x, str) for x in self.layers)):
            raise ConfigError(f"must be a layer glob or a list of them, got {self.layers!r}",
                              key=("layers",))
        validate.choice(self.rest, "rest", choices=QUANT_REST)
        for key in ("train", "retrain"):
            _expect(getattr(self, key), key, (dict,), "a mapping")
        retrain = {**QUANT_RETRAIN_DEFAULTS, **(self.retrain or {})}
        with within("retrain"):
            validate.choice(retrain["mode"], "mode", choices=QUANT_MODES)
            fraction = retrain["fix_fraction"]
            if retrain["mode"] != "progressive":
                if fraction is not None and "fix_fraction" in (self.retrain or {}):
                    raise ConfigError(f"applies only with mode: progressive, not "
                                      f"{retrain['mode']!r} (null to leave it unset)",
                                      key=("fix_fraction",))
            else:
                validate.number(fraction, "fix_fraction", bounds="(0, 1]")

    @classmethod
    def from_dict(cls, d: Any) -> QuantizeConfig:
        return _with_options(cls, d)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)
               if f.init and f.name != "options"}
        out.update(_plain(self.options))
        return out


def stage_settings(train: Mapping[str, Any], seed: int, where: tuple[str, ...],
                   overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings of a training stage: the ``train`` section itself for dense training;
    for later stages their own section plus the shared settings (:data:`INHERITED`)."""
    if where == ("train",):
        return {"seed": seed, **train}
    shared = {k: train[k] for k in INHERITED if k in train}
    return {"seed": seed, **shared, **(overrides or {})}


@dataclass
class Plan:
    """A whole recipe, checked. ``train`` and ``retrain`` hold the settings as written
    (later stages inherit some of ``train``'s, see :func:`stage_settings`); the checked
    :class:`TrainConfig` of every stage is :meth:`stage_train`."""

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "version", "name", "seed", "model", "data", "train", "prune", "oneshot", "retrain",
        "quantize")

    model: ModelConfig
    data: DataConfig | TextDataConfig
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 0})
    prune: PruneConfig | None = None
    oneshot: OneshotConfig | None = None
    retrain: dict[str, Any] | None = None
    quantize: QuantizeConfig | None = None
    name: str = "recipe"
    seed: int = 0
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        _expect(self.version, "version", (int,), "an integer")
        if self.version != PLAN_VERSION:
            raise ConfigError(f"this prunekit reads plan version {PLAN_VERSION}, the recipe "
                              f"is version {self.version}", key=("version",))
        _expect(self.name, "name", (str,), "a string")
        _expect(self.seed, "seed", (int,), "an integer")
        if self.seed is None or self.seed < 0:
            raise ConfigError(f"must be a non-negative integer, got {self.seed!r}", key=("seed",))
        _mapping(self.train, "train")
        _expect(self.retrain, "retrain", (dict,), "a mapping")
        self._check_pretrained()
        if self.prune is not None and self.oneshot is not None:
            raise ConfigError("a recipe compresses by training (prune) or after training "
                              "(oneshot), not both: remove one of the two sections",
                              key=("oneshot",))
        if self.retrain and self.prune is None and self.oneshot is None:
            raise ConfigError("has nothing to retrain: it fine-tunes inside the constraints of "
                              "the prune or oneshot section, which this recipe does not have "
                              "(remove it, or add one)", key=("retrain",))
        self.trains = {where: self._stage_train(where) for where in self.training_stages()}
        if self.trains[("train",)].distill > 0:
            raise ConfigError("dense training has no teacher to distill from: set distill in "
                              "a later stage (prune.train, retrain, quantize.train or "
                              "quantize.retrain), whose teacher is the dense model",
                              key=("train", "distill"))

    @property
    def pretrained(self) -> bool:
        """Whether the model is a pretrained Hugging Face model (``model.hf``)."""
        return self.model.hf is not None

    def _check_pretrained(self) -> None:
        """A Hugging Face model goes with text data and text data with it; such a model is
        compressed after training only (``oneshot``): the training stages' trainer is
        a classifier's (inputs and class labels), which a pretrained transformer on running
        text does not fit. Text calibration's window length and seed default to the data's
        and the recipe's."""
        text = isinstance(self.data, TextDataConfig)
        if text and not self.pretrained:
            raise ConfigError("text data calibrates and evaluates a Hugging Face model: set "
                              "model: {hf: PATH} (a save_pretrained directory or a .gguf "
                              "file), or use image data for this model", key=("data", "name"))
        if self.pretrained and not text:
            raise ConfigError(f"a Hugging Face model (model.hf) is calibrated and evaluated on "
                              f"text, not {self.data.name!r}: set data: {{name: text, "
                              f"calibration: [FILES], evaluation: [FILES]}}",
                              key=("data", "name"))
        calibration = self.oneshot.calibration if self.oneshot is not None else {}
        if not self.pretrained:
            for key in OneshotConfig.TEXT_CALIBRATION_KEYS:
                if key in calibration:
                    raise ConfigError("applies to text calibration only (data.name: text); "
                                      "image calibration takes the first `samples` training "
                                      "examples", key=("oneshot", "calibration", key))
            return
        for key in ("prune", "retrain", "quantize"):
            if getattr(self, key):
                raise ConfigError(
                    "is not supported with a Hugging Face model: a pretrained model is "
                    "compressed after training, by the oneshot section (any scheme, "
                    "quantization levels included: scheme irregular+quant); prune, retrain "
                    "and quantize train with the classification trainer", key=(key,))
        if self.oneshot is None:
            raise ConfigError("is required with a Hugging Face model (model.hf): it says how "
                              "the pretrained model is compressed", key=("oneshot",))
        for key, value in self.train.items():
            if key == "epochs" and value != 0 or key not in ("epochs", "progress"):
                raise ConfigError("does not apply to a Hugging Face model: it is pretrained, "
                                  "there is no dense training (remove the train section)",
                                  key=("train", str(key)))
        calibration.setdefault("seq_len", self.data.seq_len)
        calibration.setdefault("seed", self.seed)

    def training_stages(self) -> list[tuple[str, ...]]:
        """Where each training stage's settings live, in the order the stages run."""
        found = [("train",)]
        if self.prune is not None:
            found.append(("prune", "train"))
        if self.retrain and (self.prune is not None or self.oneshot is not None):
            found.append(("retrain",))
        if self.quantize is not None:
            found.append(("quantize", "train"))
            if self.quantize.retrain:
                found.append(("quantize", "retrain"))
        return found

    def stage_overrides(self, where: tuple[str, ...]) -> Mapping[str, Any] | None:
        """A stage's own settings (before inheriting from ``train``)."""
        if where == ("train",):
            return None
        if where == ("prune", "train"):
            return self.prune.train if self.prune else None
        if where == ("retrain",):
            return self.retrain
        q = self.quantize
        if where == ("quantize", "train"):
            return (q.train if q else None) or {"epochs": 0}
        if where == ("quantize", "retrain"):
            return {k: v for k, v in ((q.retrain if q else None) or {}).items()
                    if k not in QUANT_RETRAIN_KEYS}
        raise KeyError(where)

    def _stage_train(self, where: tuple[str, ...]) -> TrainConfig:
        with within(*where):
            return TrainConfig.from_dict(stage_settings(self.train, self.seed, where,
                                                        self.stage_overrides(where)))

    def stage_train(self, where: tuple[str, ...]) -> TrainConfig:
        """The checked training settings of the stage whose section is ``where``."""
        return self.trains[where] if where in self.trains else self._stage_train(where)

    @classmethod
    def from_dict(cls, d: Any) -> Plan:
        """A plan from a recipe's parsed YAML; errors carry the key path they are about."""
        d = _mapping({} if d is None else d)
        for key in d:
            if key in REMOVED_SECTIONS:
                raise ConfigError(f"section {key!r} is gone: {REMOVED_SECTIONS[key]}",
                                  key=(str(key),))
        validate.known_keys(d, cls.SECTIONS, noun="section")
        with within("model"):
            model = _build(ModelConfig, d.get("model"), "model")
        with within("data"):
            data = _build(_data_class(d.get("data")), d.get("data"), "data")
        sections: dict[str, Any] = {}
        for key, build in (("prune", PruneConfig.from_dict),
                           ("oneshot", OneshotConfig.from_dict),
                           ("quantize", QuantizeConfig.from_dict)):
            if d.get(key) is not None and (key != "quantize" or d[key] != {}):
                with within(key):
                    sections[key] = build(d[key])
        scalars = {k: d[k] for k in ("version", "name", "seed", "retrain") if k in d}
        train = d.get("train")
        return cls(model=model, data=data, train={"epochs": 0} if train is None else train,
                   **sections, **scalars)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (the recipe with every default filled in)."""
        return {
            "version": self.version,
            "name": self.name,
            "seed": self.seed,
            "model": self.model.to_dict(),
            "data": _plain({f.name: getattr(self.data, f.name) for f in fields(self.data)}),
            "train": _plain(self.train),
            "prune": self.prune.to_dict() if self.prune else None,
            "oneshot": self.oneshot.to_dict() if self.oneshot else None,
            "retrain": _plain(self.retrain),
            "quantize": self.quantize.to_dict() if self.quantize else None,
        }


__all__ = [
    "INHERITED",
    "PLAN_VERSION",
    "QUANT_METHODS",
    "QUANT_REST",
    "QUANT_RETRAIN_DEFAULTS",
    "QUANT_RETRAIN_KEYS",
    "DataConfig",
    "ModelConfig",
    "OneshotConfig",
    "Plan",
    "PruneConfig",
    "QuantizeConfig",
    "TextDataConfig",
    "check_fits_data",
    "meta_twin",
    "method_options",
    "stage_settings",
]
