"""``prunekit.save`` / ``prunekit.load``: a compressed model as one ``.pkz`` file.

The manifest (format ``prunekit.model/1``) names the model (zoo name or factory, its
arguments and the data's shape), small facts about the run (accuracies, methods) and one
entry per state-dict tensor, in state-dict order. A tensor with a frozen constraint is
stored by :mod:`.encoding` as sections ``<i>.index``, ``<i>.values`` and ``<i>.scales``;
every other tensor (biases, norms, running statistics, uncompressed weights) goes, raw and
in order, into the one section ``rest``; the recipe is the section ``recipe``. The file's
size on disk is exactly the sum of :func:`storage`'s parts, so a report that prints them
prints the file.

Loading never runs code from the file: a model named by a ``module:function`` factory is
only rebuilt when the caller passes the model (``load(path, model=...)``). Every tensor is
decoded and checked against the model's own state dict before the first one is loaded, so
a file for another architecture is one clear error and never a half-loaded model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..constraints import Frozen
from ..errors import DataError, PrunekitError
from . import container, encoding
from .versions import MODEL_FORMAT

PART_KINDS = ("index", "values", "scales")


@dataclass
class Loaded:
    """A model read from a ``.pkz`` file: the model, its frozen constraints, the manifest's
    ``spec`` and ``meta``, the ``recipe`` text and the on-disk ``storage`` breakdown."""

    model: nn.Module
    constraints: dict[str, Frozen]
    spec: dict[str, Any]
    meta: dict[str, Any]
    recipe: str | None
    storage: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ save
def pack(model: nn.Module, constraints: Mapping[str, Frozen] | None = None, *,
         spec: Mapping[str, Any] | None = None, recipe: str | None = None,
         meta: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of the ``.pkz`` file of ``model`` (see :func:`save`)."""
    constraints = dict(constraints or {})
    state = model.state_dict()
    params = dict(model.named_parameters())
    unknown = sorted(set(constraints) - set(params))
    if unknown:
        raise DataError(f"constraints name parameters the model does not have: {unknown}")
    tensors, sections, rest = [], [], []
    for i, (name, tensor) in enumerate(state.items()):
        entry: dict[str, Any] = {"n": name, "s": list(tensor.shape),
                                 "d": encoding.dtype_name(tensor)}
        if name in constraints:
            try:
                encoded = encoding.encode(tensor, constraints[name])
            except PrunekitError as exc:
                raise type(exc)(f"{name}: {exc}") from None
            entry.update(encoded.entry)
            sections += [(f"{i}.{kind}", data) for kind, data in encoded.parts.items()]
        else:
            entry["k"] = "raw"
            rest.append(encoding.tensor_bytes(tensor))
        tensors.append(entry)
    sections.append(("rest", b"".join(rest)))
    if recipe is not None:
        sections.append(("recipe", recipe.encode("utf-8")))
    manifest = {"format": MODEL_FORMAT, "model": dict(spec or {"name": None}),
                "meta": dict(meta or {}), "tensors": tensors}
    return container.pack_container(manifest, sections)


def save(model: nn.Module, path: str | os.PathLike,
         constraints: Mapping[str, Frozen] | None = None, *,
         spec: Mapping[str, Any] | None = None, recipe: str | None = None,
         meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (its weights inside ``constraints``) to ``path`` atomically.

    ``spec`` says how to rebuild the model (``{"name": zoo name or "module:function",
    "kwargs", "input_shape", "num_classes"}``, or for a Hugging Face model ``{"name",
    "huggingface": {"config", "causal_lm"}}``, its config, from which transformers builds
    the architecture; without it :func:`load` needs the model);
    ``recipe`` (YAML text) and ``meta`` (small JSON values) travel with it."""
    from ..files import atomic_write_bytes  # noqa: PLC0415

    data = pack(model, constraints, spec=spec, recipe=recipe, meta=meta)
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------ load
def storage(source: container.Source, manifest: Mapping[str, Any] | None = None) -> dict:
    """Bytes on disk by layer and by part (``values``, ``index``, ``scales``, ``rest``,
    ``recipe``, ``manifest``, ``header``); ``parts`` sums to ``file``."""
    sizes = container.section_sizes(source)
    if manifest is None:
        manifest, _ = container.read_container(source)
    entries = manifest["tensors"]
    parts = {kind: 0 for kind in (*PART_KINDS, "rest", "recipe", "manifest", "header")}
    layers: dict[str, dict[str, Any]] = {}
    for section, size in sizes.items():
        index, _, kind = section.partition(".")
        if kind:
            entry = entries[int(index)]
            layer = layers.setdefault(entry["n"], {
                "parts": {k: 0 for k in PART_KINDS},
                "encoding": entry["x"][0] if "x" in entry else entry["k"]})
            layer["parts"][kind] = size
            parts[kind] += size
        else:
            parts[section] = parts.get(section, 0) + size
    return {"file": sum(sizes.values()), "parts": parts, "layers": layers}


def _check_entry(entry: Any, i: int) -> dict[str, Any]:
    if not (isinstance(entry, dict) and isinstance(entry.get("n"), str)
            and isinstance(entry.get("s"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                    for d in entry["s"]) and isinstance(entry.get("d"), str)):
        raise DataError(f"tensor entry {i} of the manifest is malformed")
    return entry


def _build(spec: Any, model: nn.Module | None, source: str) -> nn.Module:
    if model is not None:
        if not isinstance(model, nn.Module):
            raise DataError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        return model
    if isinstance(spec, dict) and "huggingface" in spec:
        from ..integrations import huggingface  # noqa: PLC0415  (transformers: only here)

        try:
            return huggingface.from_architecture(spec["huggingface"])
        except PrunekitError as exc:
            raise DataError(f"{source}: cannot rebuild its Hugging Face model: {exc}") from None
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        raise DataError(f"{source} does not say which model it holds; pass model=")
    if ":" in name:
        raise DataError(f"{source} holds a model built by the factory {name!r}; files never "
                        f"import code, so build the model yourself and pass model=")
    from .. import models  # noqa: PLC0415

    try:
        return models.build(spec)
    except PrunekitError as exc:
        raise DataError(f"{source}: cannot rebuild model {name!r}: {exc}") from None


def load(path: str | os.PathLike | bytes, model: nn.Module | None = None) -> Loaded:
    """Read a ``.pkz`` file: verify it, rebuild (or fill ``model``), decode every weight."""
    source = "the data" if isinstance(path, (bytes, bytearray, memoryview)) else str(path)
    manifest, sections = container.read_container(path)
    if manifest.get("format") != MODEL_FORMAT or not isinstance(manifest.get("tensors"), list):
        raise DataError(f"{source} is not a prunekit model file (format "
                        f"{manifest.get('format')!r}, expected {MODEL_FORMAT})")
    model = _build(manifest.get("model"), model, source)
    own = model.state_dict()
    entries = [_check_entry(e, i) for i, e in enumerate(manifest["tensors"])]
    names = [e["n"] for e in entries]
    if sorted(names) != sorted(own):
        missing, extra = sorted(set(own) - set(names)), sorted(set(names) - set(own))
        raise DataError(f"{source} is for another architecture: the model lacks {extra[:5]} "
                        f"and the file lacks {missing[:5]}")
    decoded, constraints = _decode_all(entries, sections, own, source)
    model.load_state_dict(decoded)
    recipe = sections.get("recipe")
    return Loaded(model, constraints, dict(manifest.get("model") or {}),
                  dict(manifest.get("meta") or {}),
                  None if recipe is None else recipe.decode("utf-8", errors="replace"),
                  storage(path, manifest))


def _decode_all(entries: list[dict[str, Any]], sections: Mapping[str, bytes],
                own: Mapping[str, Tensor], source: str) -> tuple[dict, dict[str, Frozen]]:
    decoded: dict[str, Tensor] = {}
    constraints: dict[str, Frozen] = {}
    rest = sections.get("rest", b"")
    offset = 0
    for i, entry in enumerate(entries):
        name, shape, dtype = entry["n"], entry["s"], entry["d"]
        what = f"{source}: {name}"
        if list(own[name].shape) != shape or encoding.dtype_name(own[name]) != dtype:
            raise DataError(f"{source} is for another architecture: {name} is {dtype}{shape} "
                            f"in the file, {own[name].dtype}{list(own[name].shape)} in the model")
        if entry.get("k") == "raw":
            size = own[name].numel() * own[name].element_size()
            decoded[name] = encoding.tensor_from(rest[offset:offset + size], dtype, shape, what)
            offset += size
            continue
        parts = {kind: sections.get(f"{i}.{kind}", b"") for kind in PART_KINDS}
        decoded[name], constraints[name] = encoding.decode(entry, parts, shape, dtype, what)
    if offset != len(rest):
        raise DataError(f"{source}: the raw tensors take {offset} bytes, the file holds "
                        f"{len(rest)}")
    return decoded, constraints
