"""What ``prunekit report``, ``export`` and ``bench`` do to a saved model, for the command
line and for Python callers alike::

    prunekit.commands.report("runs/cnn/model.pkz", model_spec="mymodels:cnn")
    prunekit.commands.export("runs/cnn", "cnn.onnx")          # a run directory
    prunekit.commands.bench("cnn.pkz", model=my_cnn, batch=64)

A ``.pkz`` file names the model it holds (a zoo name, or a user's ``module:function``
factory), but reading a file never imports code: a model built by the user's own factory
is rebuilt only from what the user names themselves, one of

- ``model=``: the architecture as an ``nn.Module`` (Python);
- ``model_spec="mymodels:cnn"`` (``--model``): the factory is imported and called with
  ``model_kwargs`` (``--model-kwargs``), or else with the keyword arguments the file records;
- a run directory (``prunekit report runs/cnn``): a run the user made, whose
  ``recipe.yaml`` names the factory and its arguments; its ``model.pkz`` is the file.

A zoo model needs none of them, and neither does a pretrained Hugging Face model
(``model: {hf: PATH}``): its file records the model's config, from which transformers
builds the architecture (``AutoModelForCausalLM.from_config`` / ``AutoModel.from_config``)
without the source weights. ``report`` reads such a file (MACs per token, perplexity or
embedding similarity in place of accuracy); ``export`` and ``bench``, which run a model on
one fixed input tensor, refuse it and name the run's ``model-hf/`` directory instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from . import artifacts, models
from .artifacts import container
from .errors import ConfigError, DataError
from .factories import is_factory_spec

Echo = Callable[[str], Any]
#: the files of a run directory that these commands read
RUN_MODEL, RUN_RECIPE = "model.pkz", "recipe.yaml"


# ------------------------------------------------------------------ finding the model
def model_file(target: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(the .pkz file, the run directory or None)`` for a file or a run directory."""
    target = Path(target)
    if target.is_dir():
        path = target / RUN_MODEL
        if not path.is_file():
            raise DataError(f"{target} is a directory without a {RUN_MODEL} (is it a finished "
                            f"run of `prunekit compress`?)")
        return path, target
    if not target.is_file():
        raise DataError(f"model file not found: {target}")
    return target, None


def parse_model_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--model-kwargs``: a YAML (or JSON) mapping, e.g. ``'{width: 32, classes: 10}'``."""
    if text is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--model-kwargs {text!r} is not YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"--model-kwargs must be a mapping such as '{{width: 32}}', "
                          f"got {text!r}")
    return value


def _recipe_model(run_dir: Path) -> dict[str, Any]:
    """The ``model`` section of the run directory's recipe (``name`` and ``kwargs``)."""
    path = run_dir / RUN_RECIPE
    if not path.is_file():
        raise DataError(f"{run_dir} has no {RUN_RECIPE} to say which model it holds")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not YAML: {str(exc).splitlines()[0]}") from None
    section = recipe.get("model") if isinstance(recipe, dict) else None
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict) or not isinstance(section.get("name"), str):
        raise DataError(f"{path} does not name its model (model.name)")
    return {"name": section["name"], "kwargs": dict(section.get("kwargs") or {})}


def architecture(path: Path, run_dir: Path | None = None, *, model_spec: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> nn.Module | None:
    """The model to load the file's weights into, built from what the user named (see the
    module docstring); None for a zoo model, which the file rebuilds itself."""
    manifest, _ = container.read_container(path)
    spec = dict(manifest.get("model") or {}) if isinstance(manifest, dict) else {}
    if "huggingface" in spec and model_spec is None and model_kwargs is None:
        return None  # rebuilt from the config the file records
    if model_spec is not None:
        if not isinstance(model_spec, str) or not model_spec:
            raise ConfigError(f"--model must be a zoo name or 'module:function', "
                              f"got {model_spec!r}")
        kwargs = spec.get("kwargs") if model_kwargs is None else model_kwargs
        spec = {**spec, "name": model_spec, "kwargs": dict(kwargs or {})}
    elif model_kwargs is not None:
        raise ConfigError("--model-kwargs needs --model (the factory to call with them)")
    elif run_dir is not None:
        spec = {**spec, **_recipe_model(run_dir)}
    name = spec.get("name")
    if not isinstance(name, str):
        raise DataError(f"{path} does not say which model it holds; name it: "
                        f"--model module:function (Python: model=)")
    if model_spec is None and run_dir is None and is_factory_spec(name):
        raise DataError(
            f"{path} holds a model built by the factory {name!r}; a model file never "
            f"imports code, so name the factory yourself: --model {name} (its recorded "
            f"kwargs are used unless --model-kwargs gives others), or pass the run "
            f"directory that made it (Python: model=)")
    if not is_factory_spec(name) and model_spec is None and run_dir is None:
        return None
    torch.manual_seed(0)  # the weights are replaced: only reproducible construction matters
    return models.build(spec)


def load_model_file(target: str | os.PathLike, *, model: nn.Module | None = None,
                    model_spec: str | None = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> artifacts.Loaded:
    """The saved model at ``target`` (a ``.pkz`` file or a run directory), rebuilt as the
    module docstring says."""
    path, run_dir = model_file(target)
    if model is None:
        model = architecture(path, run_dir, model_spec=model_spec, model_kwargs=model_kwargs)
    return artifacts.load(path, model=model)


def is_pretrained(loaded: artifacts.Loaded) -> bool:
    """Whether the file holds a Hugging Face model (it records its config)."""
    return "huggingface" in loaded.spec


def refuse_pretrained(loaded: artifacts.Loaded, path: str | os.PathLike, command: str) -> None:
    """``export`` and ``bench`` run a model on one input tensor of a fixed shape; a
    Hugging Face model takes token ids and keyword arguments, so say where its usable copy
    is instead of failing inside the exporter."""
    if is_pretrained(loaded):
        raise DataError(
            f"{path} holds a Hugging Face model ({loaded.spec.get('name')}); prunekit {command} "
            f"takes models with one fixed-shape input tensor. Its compressed weights are also "
            f"in the run's model-hf/ directory (save_pretrained), which transformers and its "
            f"exporters (optimum) load; prunekit report reads this file")


def example_input(loaded: artifacts.Loaded, path: str | os.PathLike) -> Any:
    """One input for the report's forward pass: a zero tensor of the recorded shape, or
    one token for a Hugging Face model (its MACs are per token)."""
    if is_pretrained(loaded):
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}
    return torch.zeros(1, *input_shape(loaded, path))


def input_shape(loaded: artifacts.Loaded, path: str | os.PathLike) -> list[int]:
    shape = loaded.spec.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise DataError(f"{path} does not record the model's input shape")
    return shape


# ------------------------------------------------------------------ the commands
def report(target: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
           model: nn.Module | None = None, model_spec: str | None = None,
           model_kwargs: Mapping[str, Any] | None = None, echo: Echo = print
           ) -> dict[str, Any]:
    """``prunekit report``: the report of the saved model (printed; also written to
    ``out_dir`` as report.json, report.md and plots). Every byte figure is the file's own;
    for a run directory, the history and the accuracy after each step come from its
    report.json, so the training and convergence plots are drawn again too."""
    from .report import build_report, format_report, write_report  # noqa: PLC0415

    path, run_dir = model_file(target)
    loaded = load_model_file(target, model=model, model_spec=model_spec,
                             model_kwargs=model_kwargs)
    meta = loaded.meta
    methods = meta.get("methods") or []
    run = _run_records(run_dir)
    extra: dict[str, Any] = {"file": str(path)}
    stages = run.get("stage_accuracy") or meta.get("stage_accuracy")
    if stages:
        extra["stage_accuracy"] = stages
    if is_pretrained(loaded):
        extra["macs_per"] = "token"
    result = build_report(
        loaded.model, example_input(loaded, path), quality=meta.get("quality"),
        constraints=loaded.constraints, storage=loaded.storage,
        accuracy_dense=meta.get("accuracy_dense"),
        accuracy_compressed=meta.get("accuracy_compressed"),
        method=" -> ".join(methods) if methods else None, history=run.get("history"),
        updates=run.get("prune_updates"), extra=extra,
    )
    echo(format_report(result))
    if out_dir is not None:
        write_report(out_dir, result)
        echo(f"report written to {Path(out_dir).resolve()}")
    return result


def _run_records(run_dir: Path | None) -> dict[str, Any]:
    """What only the run knew (per-epoch history, ADMM's updates, the accuracy after each
    step), from the run directory's report.json, so a report of a run directory draws the
    same plots; nothing for a lone file or a run without a readable report."""
    path = None if run_dir is None else run_dir / "report.json"
    if path is None or not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {key: recorded[key] for key in ("history", "prune_updates", "stage_accuracy")
            if isinstance(recorded.get(key), list)}


def export(target: str | os.PathLike, out: str | os.PathLike, *, opset: int | None = None,
           dynamic_batch: bool = True, shrink: bool = True, model: nn.Module | None = None,
           model_spec: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
           echo: Echo = print) -> Path:
    """``prunekit export``: the saved model as ONNX at ``out``, for the input shape the file
    records, with a dynamic batch axis and dead channels removed unless asked otherwise
    (see :mod:`prunekit.artifacts.onnx_export`)."""
    from .artifacts.onnx_export import require_onnx, write_onnx  # noqa: PLC0415

    require_onnx()  # before the (slower) load, so a missing extra is the first error
    path, _ = model_file(target)
    loaded = load_model_file(target, model=model, model_spec=model_spec,
                             model_kwargs=model_kwargs)
    refuse_pretrained(loaded, path, "export")
    written = write_onnx(loaded.model, loaded.constraints,
                         torch.zeros(1, *input_shape(loaded, path)), out, opset=opset,
                         dynamic_batch=dynamic_batch, shrink=shrink)
    echo(written.describe())
    return written.path


def bench(target: str | os.PathLike, *, batch: int = 1, repeats: int = 20,
          model: nn.Module | None = None, model_spec: str | None = None,
          model_kwargs: Mapping[str, Any] | None = None,
          plan_cache: str | os.PathLike | None = None, echo: Echo = print
          ) -> dict[str, Any]:
    """``prunekit bench``: the latency figures of :func:`prunekit.runtime.bench_model` for
    the saved model (printed and returned), on inputs of the shape the file records."""
    from . import runtime  # noqa: PLC0415  (compiling imports numba and ONNX Runtime)

    path, _ = model_file(target)
    loaded = load_model_file(target, model=model, model_spec=model_spec,
                             model_kwargs=model_kwargs)
    refuse_pretrained(loaded, path, "bench")
    result = runtime.bench_model(loaded.model, input_shape(loaded, path), name=path.name,
                                 batch=batch, repeats=repeats, plan_cache=plan_cache,
                                 echo=echo)
    return {"file": str(path), **result}
