"""Sequential, memory-bounded one-shot compression of a whole model.

Layers are compressed in forward order, and each layer's calibration inputs come from the
layers before it *already compressed* (as SparseGPT and ALPS do), so a layer's solver
compensates for the error upstream.

- **Transformer stacks** (the largest ``nn.ModuleList`` whose blocks hold targets: a
  Hugging Face decoder's ``model.layers``, an encoder's ``encoder.layer``): the inputs of the
  first block are caught by a pre-hook that stops the forward pass; then one block at a
  time, its targets' Gram matrices are accumulated over the cached inputs (layers that
  read one tensor share one), the targets are solved and written, and the compressed
  block's outputs become the next block's cached inputs. Memory: the model, one block's
  inputs for the calibration set (``samples x seq_len x hidden`` floats) and one Gram
  matrix per distinct input of the block.
- **Other models** (CNNs, or targets outside the stack): hook-driven order. One pass finds
  the order in which the target layers run; then, per target, the calibration forward is
  run up to that layer (a pre-hook accumulates its Gram matrix and stops the pass).
"""

from __future__ import annotations

import contextlib
import copy
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from .capture import DenseRows, GramHooks, Probe, Site, check_capturable, site_of
from .constraint import LayerConstraint
from .problem import LayerProblem
from .record import LayerRecord, OneShotResult
from .solvers import SOLVERS, check_method, check_targets


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass early."""


def call(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one calibration batch: a dict (keyword inputs, as a Hugging Face
    model takes them), a tuple/list (positional) or one tensor."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, no fused attention fast path and (for Hugging Face models)
    no KV cache, restored after."""
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        if cache is not None:
            config.use_cache = False
        model.eval()
        # torch's fused transformer-layer kernels skip the submodule calls the hooks see
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        if cache is not None:
            config.use_cache = cache


def find_blocks(model: nn.Module, module_names: Sequence[str]) -> tuple[str, nn.ModuleList] | None:
    """The largest ``nn.ModuleList`` of which at least two children hold target layers."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        prefix = f"{name}." if name else ""
        holding = {n[len(prefix):].split(".")[0] for n in module_names if n.startswith(prefix)}
        if len(holding) >= 2 and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


class _Solver:
    """Solves targets and keeps their records (one progress bar for the whole model)."""

    def __init__(self, method: str, options: dict[str, Any], total: int, progress: bool):
        self.method, self.options = method, options
        self.records: list[LayerRecord] = []
        self.bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, desc=f"oneshot {method}", unit="layer")

    def solve(self, target: Any, constraint: LayerConstraint, gram: Any) -> None:
        param = target.param
        problem = LayerProblem(param.detach().reshape(param.shape[0], -1), gram.h, gram.cross)
        start = time.perf_counter()
        w, info = SOLVERS[self.method](problem, constraint, **self.options)
        seconds = time.perf_counter() - start
        magnitude = constraint.project(problem.w0)
        with torch.no_grad():
            param.copy_(w.reshape(param.shape).to(param.dtype))
        self.records.append(LayerRecord(
            name=target.name, method=self.method, scheme="+".join(constraint.scheme_names),
            sparsity=target.sparsity, shape=tuple(param.shape),
            magnitude_error=problem.relative_error(magnitude), error=problem.relative_error(w),
            achieved_sparsity=float((w == 0).float().mean()), seconds=seconds,
            iterations=info.get("iterations"), rho=info.get("rho"), inputs=gram.rows))
        if self.bar is not None:
            self.bar.set_postfix_str(f"{target.name} err {self.records[-1].error:.3g}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_stopped(model: nn.Module, batches: Sequence[Any], handle: Any) -> None:
    """Every calibration batch through ``model`` until a hook raises :class:`_Stop`; then
    ``handle`` (that hook's) is removed."""
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                call(model, batch)
    finally:
        handle.remove()


def _replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _detach_cache(kwargs: dict) -> dict:
    """A block's keyword inputs without a KV cache (each block is run many times)."""
    out = dict(kwargs)
    for key in ("past_key_value", "past_key_values", "layer_past"):
        if key in out:
            out[key] = None
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def chained(model: nn.Module, blocks: nn.ModuleList, batch: Any) -> bool:
    """Whether one forward pass on ``batch`` calls every block once, in order, each on the
    previous block's output: only then may the blocks be compressed one at a time from
    cached inputs (otherwise the hook-driven order is used)."""
    seen: list[tuple[int, Any, Any]] = []

    def pre(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.append((index, args[0] if args else kwargs.get("hidden_states"), None))
        return hook

    def post(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            i, x, _ = seen[-1]
            seen[-1] = (i, x, out[0] if isinstance(out, (tuple, list)) else out)
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(block.register_forward_hook(post(i), with_kwargs=True))
    try:
        call(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if [i for i, _, _ in seen] != list(range(len(blocks))):
        return False
    return all(isinstance(seen[i][1], torch.Tensor) and seen[i][1] is seen[i - 1][2]
               for i in range(1, len(seen)))


def _block_pass(model: nn.Module, blocks: nn.ModuleList, batches: Sequence[Any],
                pairs: list[tuple[Any, LayerConstraint]], solver: _Solver,
                need_outputs: bool, dense_target: bool = False) -> None:
    """Compress the targets inside ``blocks``, one block at a time (module docstring).
    With ``dense_target``, the uncompressed model's block inputs are carried beside the
    compressed ones (a second cache, and an uncompressed copy of the block being solved),
    so each layer's problem gets the cross term toward the dense output (:mod:`.problem`)."""
    cached: list[tuple[tuple, dict]] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        cached.append((args, _detach_cache(kwargs)))
        raise _Stop

    _run_stopped(model, batches, blocks[0].register_forward_pre_hook(catch, with_kwargs=True))
    if len(cached) != len(batches):
        raise DataError(f"the calibration forward pass reached the first block in "
                        f"{len(cached)} of {len(batches)} batches")
    block_names = {id(b): i for i, b in enumerate(blocks)}
    modules = dict(model.named_modules())
    by_block: dict[int, list[tuple[Any, LayerConstraint]]] = {}
    for target, constraint in pairs:
        owner = _owner(modules, target.module_name, blocks, block_names)
        by_block.setdefault(owner, []).append((target, constraint))
    last = max(by_block) if by_block else -1
    dense_cached = list(cached) if dense_target else None
    prefix = {i: _name_of(modules, b) for i, b in enumerate(blocks)}
    for i, block in enumerate(blocks):
        members = by_block.get(i, [])
        reference = block
        if members:
            hooked = {t.name: site_of(modules, t.module_name, t.name) for t, _ in members}
            if dense_cached is None:
                with GramHooks(hooked) as hooks:
                    for args, kwargs in cached:
                        block(*args, **kwargs)
            else:
                reference = copy.deepcopy(block)
                copies = {name: Site(reference.get_submodule(site.name[len(prefix[i]) + 1:]),
                                     site.part) for name, site in hooked.items()}
                with DenseRows(copies) as dense, GramHooks(hooked, dense) as hooks:
                    for (args, kwargs), (dargs, dkwargs) in zip(cached, dense_cached,
                                                                strict=True):
                        reference(*dargs, **dkwargs)
                        block(*args, **kwargs)
            for target, constraint in members:
                solver.solve(target, constraint, hooks.grams[target.name])
            del hooks
        if i == last and not need_outputs:
            break
        _advance(block, cached)
        if dense_cached is not None:
            _advance(reference, dense_cached)


def _advance(block: nn.Module, cached: list[tuple[tuple, dict]]) -> None:
    """Replace each cached input of ``block`` by its output (the next block's input)."""
    for j, (args, kwargs) in enumerate(cached):
        out = block(*args, **kwargs)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        cached[j] = _replace_hidden(args, kwargs, hidden)


def _name_of(modules: dict[str, nn.Module], module: nn.Module) -> str:
    return next(name for name, m in modules.items() if m is module)


def _owner(modules: dict[str, nn.Module], name: str, blocks: nn.ModuleList,
           index: dict[int, int]) -> int:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        module = modules.get(".".join(parts[:k]))
        if module is not None and id(module) in index:
            return index[id(module)]
    return -1


def _forward_order(model: nn.Module, batch: Any, modules: dict[str, nn.Module]) -> list[str]:
    """Names of ``modules`` in the order the model first calls them on ``batch``."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(
        lambda _m, _a, n=name: order.append(n) if n not in order else None)
        for name, m in modules.items()]
    try:
        call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in modules if n not in order]


def _hooked_pass(model: nn.Module, batches: Sequence[Any],
                 pairs: list[tuple[Any, LayerConstraint]], solver: _Solver) -> None:
    """Compress targets in forward order, each module's from a forward pass stopped at it
    (a recurrent or attention module's weights from one pass: :mod:`.replay`)."""
    named = dict(model.named_modules())
    sites = {t.name: site_of(named, t.module_name, t.name) for t, _ in pairs}
    modules = {site.name: site.module for site in sites.values()}
    order = _forward_order(model, batches[0], modules)
    by_module: dict[str, list[tuple[Any, LayerConstraint]]] = {}
    for target, constraint in pairs:
        by_module.setdefault(sites[target.name].name, []).append((target, constraint))

    def stop(module: nn.Module, args: tuple) -> None:
        raise _Stop

    for name in order:
        members = by_module[name]
        with GramHooks({t.name: sites[t.name] for t, _ in members}) as hooks:
            _run_stopped(model, batches, modules[name].register_forward_pre_hook(stop))
        for target, constraint in members:
            solver.solve(target, constraint, hooks.grams[target.name])


def _probe_replays(model: nn.Module, batch: Any, targets: Sequence[Any]) -> None:
    """One forward pass replaying every recurrent or attention site (:mod:`.replay`) before
    any weight changes: what cannot be replayed is refused while the model is intact."""
    named = dict(model.named_modules())
    sites = {t.name: site_of(named, t.module_name, t.name) for t in targets}
    replayed = {k: s for k, s in sites.items() if s.part != "weight"
                or not isinstance(s.module, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    if replayed:
        with Probe(replayed):
            call(model, batch)


def check(model: nn.Module, rules: Any, method: str = "admm", *, example: Any = None,
          **options: Any) -> tuple[list[Any], dict[str, Any]]:
    """Everything :func:`compress` checks before its first forward pass, with no forward
    pass: the method and its options, the rules against the model, every target's layer
    (its inputs must be capturable) and scheme (the method must solve it). Returns the
    targets and the method's full options; raises one prunekit error naming the problem.
    A pipeline's plan step calls this."""
    import prunekit  # noqa: PLC0415

    opts = check_method(method, options)
    targets = list(prunekit.resolve(model, rules, example=example))
    named = dict(model.named_modules())
    for target in targets:
        if hasattr(target, "module_name"):
            check_capturable(site_of(named, target.module_name, target.name), target.name)
    check_targets(method, targets)
    return targets, opts


def compress(model: nn.Module, batches: Iterable[Any], rules: Any, method: str = "admm", *,
             progress: bool = True, example: Any = None, **options: Any) -> OneShotResult:
    """Compress ``model`` in place from calibration ``batches`` (module docstring).

    ``rules``: target rules as :func:`prunekit.resolve` takes them; ``method``: ``admm``,
    ``sparsegpt``, ``wanda`` or ``magnitude``; ``options``: the method's options
    (:data:`prunekit.oneshot.solvers.OPTIONS`). Everything is checked before the first
    forward pass. Returns the frozen constraints (:func:`prunekit.freeze` of the compressed
    weights, which it leaves unchanged) and one record per layer."""
    import prunekit  # noqa: PLC0415  (the package's lazy public names)

    start = time.perf_counter()
    targets, opts = check(model, rules, method, example=example, **options)
    constraints = check_targets(method, targets)
    batches = list(batches)
    if not batches:
        raise DataError("one-shot compression needs at least one calibration batch")
    pairs = list(zip(targets, constraints, strict=True))
    solver = _Solver(method, opts, len(pairs), progress)
    try:
        with _inference(model):
            _probe_replays(model, batches[0], targets)
            found = find_blocks(model, [t.module_name for t in targets])
            inside: list[tuple[Any, LayerConstraint]] = []
            if found is not None and chained(model, found[1], batches[0]):
                prefix = f"{found[0]}." if found[0] else ""
                inside = [p for p in pairs if p[0].module_name.startswith(prefix)]
            outside = [p for p in pairs if p not in inside]
            if inside:
                _block_pass(model, found[1], batches, inside, solver, need_outputs=False,
                            dense_target=bool(opts.get("dense_target")))
            if outside:
                _hooked_pass(model, batches, outside, solver)
    finally:
        solver.close()
    frozen = prunekit.freeze(model, targets)
    return OneShotResult(frozen, solver.records, time.perf_counter() - start, peak_rss_mb())
