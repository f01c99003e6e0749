"""Compiled CPU inference: latency of pruned models, dense torch vs prunekit.compile vs peers.

Models (random weights: latency does not depend on the values): LeNet-5 (1x28x28), ResNet-20
and VGG-16 (CIFAR 3x32x32), a 2-layer GRU-1024 classifier (20 steps of 40 features) and a
4096-wide MLP (4096-4096-4096-10), each pruned at 50/75/90% of its scheme:

- ResNet-20, VGG-16: filter pruning by coupled channel groups (``prunekit.structure``:
  every removable group loses that fraction of its channels, biases and BatchNorm included);
- LeNet-5 (conv1, conv2, fc1), GRU (every gate matrix), MLP (the two 4096x4096 layers):
  BLK-REW block-column pruning (blocks 8x4 channels for convs, 16x16 otherwise).

Engines: ``dense`` (torch on the unpruned model), ``prunekit`` (``prunekit.compile`` for
that batch and thread count), ``torch_csr`` / ``torch_bsr`` (every pruned layer forced to
torch CSR, resp. BSR 16x16, behind im2col for convs; block-pruned models only),
``torch_pruning`` (Torch-Pruning's physical channel removal at the same ratio, L2 magnitude;
filter-pruned models only) and ``deepsparse`` (DeepSparse 1.8.0 on the ONNX export of the
same masked model, in its own venv: ``bash bench/deepsparse_venv.sh``; at batch 1, and at
batch 64 for the MLP and LeNet-5, to keep its compile times within the run). Latency is the
median of timed calls after warm-up, all engines of one configuration (dense included)
timed in ten alternating rounds of --min-seconds/10 each (at least 2 calls per round), so a
burst of load from other processes falls on all of them; at batch 1 and 64, with 1 and 2
threads (DeepSparse: median of at least 7 calls in its own process, after the torch runs).
Writes bench/results/inference.{json,md,png}.

    python bench/inference.py [--models ...] [--min-seconds 0.3] [--no-deepsparse] [--merge]

``--merge`` re-measures only ``--models`` and keeps every other model's rows from the
committed inference.json (refused when that was measured on another CPU); the results
file names each re-measuring command with its date and load.

Quiet the machine first (other benchmarks paused); the load average is recorded.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prunekit  # noqa: E402
from common import RESULTS, command, header, machine, write_json  # noqa: E402
from prunekit import models  # noqa: E402
from prunekit.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from prunekit.runtime import Im2colConv2d, SparseLinear, SparseRNN  # noqa: E402

SPARSITIES = (0.5, 0.75, 0.9)
#: alternating timing rounds per configuration (the rows of runs before 2026-12-03 used 3)
ROUNDS = 10
BATCHES = (1, 64)
THREADS = (1, 2)
ENGINES = ("dense", "prunekit", "torch_csr", "torch_bsr", "torch_pruning", "deepsparse")
#: models DeepSparse also runs at batch 64 (its strength: fully connected layers); every
#: model runs at batch 1, where the issue compares against it
DS_BATCH64 = ("mlp4096", "lenet5")
DS_PYTHON = Path(__file__).resolve().parent / ".venv-deepsparse" / "bin" / "python"
#: the process settings under which the kernel measurements were stable on this machine
QUIET_ENV = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
             "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


# ---------------------------------------------------------------------- models
class MLP(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 10))


def _gru() -> nn.Module:
    return models.get("gru_classifier", input_size=40, hidden_size=1024, num_layers=2,
                      num_classes=61)


MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {"build": lambda: models.get("lenet5"), "shape": (1, 28, 28), "scheme": "block",
               "layers": ["conv1", "conv2", "fc1"]},
    "resnet20": {"build": lambda: models.get("resnet20"), "shape": (3, 32, 32),
                 "scheme": "filter", "head": "fc"},
    "vgg16": {"build": lambda: models.get("vgg16"), "shape": (3, 32, 32), "scheme": "filter",
              "head": "classifier"},
    "gru1024": {"build": _gru, "shape": (20, 40), "scheme": "block", "layers": ["rnn"]},
    "mlp4096": {"build": MLP, "shape": (4096,), "scheme": "block", "layers": ["0", "2"]},
}


def _trained_looking(model: nn.Module) -> nn.Module:
    """Random but non-trivial BatchNorm statistics, fixed by seed."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def pruned(name: str, sparsity: float) -> nn.Module:
    spec = MODELS[name]
    torch.manual_seed(0)
    model = _trained_looking(spec["build"]())
    if spec["scheme"] == "filter":
        rule = {"scheme": "group_filter", "sparsity": sparsity}
        example = torch.randn(2, *spec["shape"])
        prunekit.freeze(model, prunekit.resolve(model, [rule], example=example))
    else:
        targets = prunekit.resolve(model, [{"layers": spec["layers"], "scheme": "block",
                                            "sparsity": sparsity}])
        prunekit.freeze(model, targets)
    return model.eval()


def force(model: nn.Module, engine: str) -> nn.Module:
    """Every pruned layer of ``model`` run by one torch sparse ``engine`` (csr or bsr)."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and float((m.weight == 0).float().mean()) > 0.3:
            new = (SparseLinear(m.weight, m.bias, engine) if isinstance(m, nn.Linear)
                   else Im2colConv2d(m, engine))
        elif isinstance(m, nn.GRU):
            new = SparseRNN(m, engine)
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def torch_pruning(name: str, sparsity: float, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp  # noqa: PLC0415  (bench extra)

    torch.manual_seed(0)
    model = _trained_looking(MODELS[name]["build"]())
    head = model.get_submodule(MODELS[name]["head"])
    pruner = tp.pruner.MetaPruner(model, example_inputs=x[:1],
                                  importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, ignored_layers=[head])
    pruner.step()
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise RuntimeError(f"the model Torch-Pruning returns does not run: {exc}") from None
    return model


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13)


# ---------------------------------------------------------------------- run
def _engines(name: str, s: float, model: nn.Module, dense_model: nn.Module,
             x: torch.Tensor, skipped: list) -> dict[str, nn.Module]:
    """Every engine's module for one configuration (the compiled one for this batch and
    thread count)."""
    engines = {"dense": dense_model, "prunekit": prunekit.compile(model, x)}
    if MODELS[name]["scheme"] == "block":
        engines.update({f"torch_{e}": force(model, e) for e in ("csr", "bsr")})
    else:
        try:
            engines["torch_pruning"] = torch_pruning(name, s, x)
        except Exception as exc:  # recorded: a peer that cannot prune this model
            skipped.append({"model": name, "engine": "torch_pruning", "sparsity": s,
                            "why": f"{type(exc).__name__}: {exc}"[:300]})
    return engines


def interleaved_ms(fns: dict[str, Callable[[], Any]], min_seconds: float,
                   rounds: int = ROUNDS) -> dict[str, float]:
    """Median ms of every function, timed in ``rounds`` alternating blocks so that a burst
    of load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
            fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                start = time.perf_counter()
                block = 0
                while block < 2 or (time.perf_counter() - start < min_seconds / rounds
                                    and block < 70):
                    t = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t)
                    block += 1
    return {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}


def deepsparse_results(python: Path, jobs: list[dict[str, Any]], tmp: Path) -> list[dict]:
    """Run the jobs in the DeepSparse venv. The engine aborts the whole process on some
    graphs (a C++ assertion), so the worker is restarted after the job it died on, which is
    recorded as an error."""
    worker = Path(__file__).resolve().parent / "deepsparse_worker.py"
    results: list[dict[str, Any]] = []
    while jobs:
        todo, out = tmp / "jobs.json", tmp / "out.json"
        todo.write_text(json.dumps(jobs))
        out.unlink(missing_ok=True)
        proc = subprocess.run([str(python), str(worker), str(todo), str(out)], check=False,
                              env={**os.environ, **QUIET_ENV}, capture_output=True, text=True)
        done = json.loads(out.read_text()) if out.exists() else []
        results += done
        jobs = jobs[len(done):]
        if jobs and proc.returncode != 0:
            results.append({"key": jobs[0]["key"], "error": "DeepSparse aborted while "
                            f"compiling the model (exit {proc.returncode})"})
            jobs = jobs[1:]
        elif jobs:
            break
    return results


def run(names: list[str], min_seconds: float, deepsparse: Path | None) -> tuple[list, list]:
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    ds_jobs: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="inference-onnx-"))

    def row(name, sparsity, batch, threads, engine, ms):
        rows.append({"model": name, "scheme": MODELS[name]["scheme"], "sparsity": sparsity,
                     "batch": batch, "threads": threads, "engine": engine, "ms": ms})

    for name in names:
        spec = MODELS[name]
        dense_model = _trained_looking(spec["build"]())
        masked = {s: pruned(name, s) for s in SPARSITIES}
        for batch in BATCHES:
            x = torch.randn(batch, *spec["shape"], generator=torch.Generator().manual_seed(1))
            for threads in THREADS:
                torch.set_num_threads(threads)
                for s in SPARSITIES:
                    engines = _engines(name, s, masked[s], dense_model, x, skipped)
                    times = interleaved_ms({k: (lambda m=m, x=x: m(x)) for k, m in engines.items()},
                                           min_seconds)
                    for engine, ms in times.items():
                        row(name, s, batch, threads, engine, ms)
                    print(f"{name} s={s} b={batch} t={threads}: "
                          + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()), flush=True)
                    if (deepsparse is not None and threads == THREADS[0]
                            and (batch == 1 or name in DS_BATCH64)):
                        path = tmp / f"{name}-{s}-{batch}.onnx"
                        try:
                            export_onnx(masked[s], x, path)
                        except Exception as exc:
                            skipped.append({"model": name, "engine": "deepsparse",
                                            "why": f"ONNX export: {type(exc).__name__}: "
                                                   f"{exc}"[:300]})
                            continue
                        for t in THREADS:
                            ds_jobs.append({"key": [name, s, batch, t], "onnx": str(path),
                                            "shape": list(x.shape), "threads": t,
                                            "min_seconds": min_seconds})
    for result in deepsparse_results(deepsparse, ds_jobs, tmp) if ds_jobs else []:
        name, s, batch, t = result["key"]
        if "ms" in result:
            row(name, s, batch, t, "deepsparse", result["ms"])
        else:
            skipped.append({"model": name, "engine": "deepsparse", "sparsity": s,
                            "batch": batch, "why": result["error"]})
    dense = {(r["model"], r["sparsity"], r["batch"], r["threads"]): r["ms"] for r in rows
             if r["engine"] == "dense"}
    for r in rows:
        r["speedup_vs_dense"] = dense[r["model"], r["sparsity"], r["batch"], r["threads"]] / r["ms"]
        r["flop_limit"] = 1.0 / (1.0 - r["sparsity"])
    return rows, skipped


# ---------------------------------------------------------------- thread pools
def probe(layer: str) -> None:
    """Run in a subprocess with ``NUMBA_THREADING_LAYER=layer``: alternate torch GEMVs and
    numba kernels at 2 threads, print the median ms of the chain as JSON."""
    import numba  # noqa: PLC0415

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = [nn.Linear(1024, 1024) for _ in range(4)]
    sparse = {}
    for engine in ("gathered", "gathered_parallel"):
        layers = []
        for d in dense:
            w = prunekit.schemes.get("block").project(d.weight.detach(), 0.9)
            layers.append(SparseLinear(w, d.bias, engine))
        sparse[engine] = layers
    x = torch.randn(1, 1024)

    def chain(layers):
        def run():
            y = x
            for d, s in zip(dense, layers, strict=True):
                y = torch.relu(s(d(y)))
            return y
        return run

    out = interleaved_ms({k: chain(v) for k, v in sparse.items()}, 1.5)
    print(json.dumps({"layer": numba.threading_layer(), **out}))


def thread_pools() -> list[dict[str, Any]]:
    """The chain of :func:`probe` under numba's ``omp`` and ``workqueue`` layers."""
    results = []
    for layer in ("workqueue", "omp"):
        proc = subprocess.run([sys.executable, __file__, "--probe", layer], capture_output=True,
                              text=True, env={**os.environ, "NUMBA_THREADING_LAYER": layer})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        results.append({"requested": layer, **(json.loads(lines[-1]) if lines else
                                              {"error": proc.stderr.strip()[-300:]})})
    return results


def pools_text(pools: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    if not pools:
        return ""
    where = ""
    if meta.get("thread_pools_cpu"):  # measured later than the table, maybe elsewhere
        where = (f"Measured on {meta['thread_pools_cpu']}, load average "
                 f"{meta.get('thread_pools_load_average', '?')}. ")
    lines = ["## Thread pools: numba next to torch\n", where +
             "Four 1024x1024 layers at batch 1, 2 threads, each a dense torch `Linear` then a "
             "90% block-sparse prunekit kernel (median ms of the chain):\n",
             "| numba threading layer | serial numba kernel | parallel numba kernel |",
             "|---|---|---|"]
    for p in pools:
        if "error" in p:
            lines.append(f"| {p['requested']} | failed: {p['error']} | |")
        else:
            lines.append(f"| {p['layer']} | {p['gathered']:.3f} | "
                         f"{p['gathered_parallel']:.3f} |")
    lines.append("\nprunekit selects `workqueue` unless `NUMBA_THREADING_LAYER` is set: `omp` "
                 "loads a second OpenMP runtime next to torch's, and `compile` measures the "
                 "serial and the parallel kernel for every layer anyway.\n")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- report
def _get(rows, **want) -> list[dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in want.items())]


def goals(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    block = [r for r in _get(rows, engine="prunekit", batch=1)
             if r["model"] in ("mlp4096", "gru1024")]
    for r in sorted(block, key=lambda r: (r["model"], r["threads"], r["sparsity"])):
        share = r["speedup_vs_dense"] / r["flop_limit"]
        extra = " (needs >= 5x)" if r["sparsity"] == 0.9 else ""
        ok = share >= 0.5 and (r["sparsity"] != 0.9 or r["speedup_vs_dense"] >= 5)
        lines.append(f"- block {r['model']} {r['sparsity']:.0%}, batch 1, {r['threads']} thr: "
                     f"{r['speedup_vs_dense']:.2f}x = {share:.2f} of the limit "
                     f"{r['flop_limit']:.0f}x{extra}: {'met' if ok else 'NOT met'}")
    for r in _get(rows, engine="prunekit", batch=1, model="gru1024", sparsity=0.9):
        ok = r["speedup_vs_dense"] >= 3
        lines.append(f"- GRU-1024 90%, batch 1, {r['threads']} thr: "
                     f"{r['speedup_vs_dense']:.2f}x end to end (needs >= 3x): "
                     f"{'met' if ok else 'NOT met'}")
    for model in ("resnet20", "vgg16"):
        for r in _get(rows, engine="prunekit", batch=64, model=model, sparsity=0.5):
            ok = r["speedup_vs_dense"] >= 1.6
            lines.append(f"- filter {model} 50%, batch 64, {r['threads']} thr: "
                         f"{r['speedup_vs_dense']:.2f}x (needs >= 1.6x): "
                         f"{'met' if ok else 'NOT met'}")
    faster = total = 0
    slower = []
    for r in _get(rows, engine="deepsparse", batch=1):
        ours = _get(rows, engine="prunekit", batch=1, model=r["model"],
                    sparsity=r["sparsity"], threads=r["threads"])
        if ours:
            total += 1
            if ours[0]["ms"] < r["ms"]:
                faster += 1
            else:
                slower.append(f"{r['model']} {r['sparsity']:.0%} {r['threads']} thr "
                              f"({ours[0]['ms']:.3g} vs {r['ms']:.3g} ms)")
    if total:
        lines.append(f"- faster than DeepSparse at batch 1: {faster} of {total} configurations"
                     + (f"; slower in {', '.join(slower)}" if slower else "")
                     + (": met" if faster == total else ": NOT met everywhere"))
    return lines


def contention(rows: list[dict[str, Any]]) -> str:
    """Configurations whose dense time at 2 threads exceeds 1.5x the 1-thread time: either
    another process took a core during the measurement or torch's second thread costs more
    than it gives on those layers; either way their 2-thread speedups are measured against
    a slow dense time."""
    suspect = []
    for r in _get(rows, engine="dense", threads=2):
        one = _get(rows, engine="dense", threads=1, model=r["model"], batch=r["batch"],
                   sparsity=r["sparsity"])
        if one and r["ms"] > 1.5 * one[0]["ms"]:
            suspect.append(f"{r['model']} {r['sparsity']:.0%} batch {r['batch']} "
                           f"({r['ms']:.3g} vs {one[0]['ms']:.3g} ms)")
    text = ("The machine has 2 cores; the other benchmarks were paused while timing (the "
            "load average before timing is above). Alternating rounds put a burst of load "
            "on every engine of a configuration alike, but not always evenly. ")
    if suspect:
        text += ("Dense at 2 threads took over 1.5x its 1-thread time in "
                 + ", ".join(suspect) + ": with the machine otherwise idle this is torch's "
                 "second thread slowing small batch-1 layers down on this machine (or a "
                 "burst of load from outside), so those 2-thread speedups are against a slow "
                 "dense time; the 1-thread rows are the fair comparison. ")
    return text


def plot(rows: list[dict[str, Any]], names: list[str]) -> None:
    fig, axes = plt.subplots(len(BATCHES), len(names), figsize=(3.2 * len(names), 6.4),
                             squeeze=False)
    colors = {"prunekit": "C0", "torch_csr": "C1", "torch_bsr": "C2", "torch_pruning": "C3",
              "deepsparse": "C4"}
    for i, batch in enumerate(BATCHES):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ax.plot(SPARSITIES, [1 / (1 - s) for s in SPARSITIES], "k:", label="FLOP limit")
            ax.axhline(1.0, color="grey", lw=0.8)
            for engine, color in colors.items():
                for threads, style in ((2, "-"), (1, "--")):
                    pts = sorted((r["sparsity"], r["speedup_vs_dense"]) for r in rows
                                 if r["model"] == name and r["batch"] == batch
                                 and r["threads"] == threads and r["engine"] == engine)
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=color,
                                label=f"{engine} {threads} thr")
            ax.set_yscale("log")
            ax.set_title(f"{name}, batch {batch}", fontsize=9)
            ax.set_xticks(SPARSITIES)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("speedup vs dense torch")
            if i == len(BATCHES) - 1:
                ax.set_xlabel("sparsity")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(RESULTS / "inference.png", buf.getvalue())


def merged(rows: list[dict[str, Any]], skipped: list[dict[str, Any]], names: list[str],
           load_before: str) -> dict[str, Any]:
    """The committed results with ``names``'s rows replaced by this run's ``rows``."""
    old = json.loads((RESULTS / "inference.json").read_text())
    if old["machine"]["cpu"] != machine()["cpu"]:
        raise SystemExit(f"--merge: inference.json was measured on {old['machine']['cpu']}, "
                         f"this is {machine()['cpu']}; measure every model here instead")
    keep = [r for r in old["rows"] if r["model"] not in names]
    return {**old,
            "rows": keep + rows,
            "skipped": [s for s in old["skipped"] if s["model"] not in names] + skipped,
            "remeasured": old.get("remeasured", []) + [
                {"models": names, "command": command(), "date": machine()["date"],
                 "load_average_before": load_before, "rounds": ROUNDS}]}


def write(rows: list[dict[str, Any]], skipped: list[dict[str, Any]], names: list[str],
          load_before: str, pools: list[dict[str, Any]] | None = None,
          meta: dict[str, Any] | None = None, cmd: str | None = None,
          remeasured: list[dict[str, Any]] | None = None) -> None:
    if meta is None:
        meta = machine()
        meta["load_average_before"] = load_before
        meta["timing_rounds"] = ROUNDS
    pools, remeasured = pools or [], remeasured or []
    write_json("inference.json", {"command": cmd or command(), "machine": meta, "rows": rows,
                                  "skipped": skipped, "thread_pools": pools,
                                  "remeasured": remeasured})
    plot(rows, names)
    order = {e: i for i, e in enumerate(ENGINES)}
    rows = sorted(rows, key=lambda r: (names.index(r["model"]), r["batch"], r["threads"],
                                       r["sparsity"], order[r["engine"]]))
    table = ["| model | scheme | sparsity | batch | threads | engine | ms | speedup vs dense |"
             " FLOP limit |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['scheme']} | {r['sparsity']:.0%} | {r['batch']} | "
              f"{r['threads']} | {r['engine']} | {r['ms']:.3f} | {r['speedup_vs_dense']:.2f}x | "
              f"{r['flop_limit']:.0f}x |" for r in rows]
    first: dict[tuple, dict[str, Any]] = {}
    for s in skipped:  # one line per model, engine, sparsity (and batch where it matters)
        first.setdefault((s["model"], s["engine"], s.get("sparsity"), s.get("batch")), s)
    skips = "".join(
        f"- {s['model']} / {s['engine']}"
        + (f" ({s['sparsity']:.0%}" if s.get("sparsity") is not None else "")
        + (f", batch {s['batch']})" if "batch" in s else (")" if "sparsity" in s else ""))
        + f": {s['why']}\n" for s in first.values())
    text = (header("Compiled CPU inference: pruned models, dense torch vs prunekit.compile",
                   meta, cmd or command())
            + f"- load average before timing (1/5/15 min): {load_before}; "
            f"{meta.get('timing_rounds', 3)} timing rounds\n"
            + "".join(f"- {', '.join(r['models'])} re-measured by `{r['command']}` on "
                      f"{r['date']} (load before: {r['load_average_before']}; "
                      f"{r.get('rounds', 3)} timing rounds)\n"
                      for r in remeasured)
            + "\n"
            + (__doc__ or "").split("\n\n    python")[0].split("\n", 1)[1].strip() + "\n\n"
            "The FLOP limit is 1/(1-s), the issue's yardstick; filter pruning "
            "removes input channels of the next layer too, so its FLOPs can fall by more.\n\n"
            "## Required goals\n\n" + "\n".join(goals(rows)) + "\n\n"
            + contention(rows) + "\n\n"
            + ("## Not measured\n\n" + skips + "\n" if skips else "")
            + pools_text(pools, meta)
            + "## Rows\n\n" + "\n".join(table) + "\n\n![speedup vs sparsity](inference.png)\n")
    atomic_write_text(RESULTS / "inference.md", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--min-seconds", type=float, default=0.3,
                        help="time each engine for at least this long (median of the calls)")
    parser.add_argument("--no-deepsparse", action="store_true")
    parser.add_argument("--replot", action="store_true", help="redraw from inference.json")
    parser.add_argument("--merge", action="store_true",
                        help="re-measure --models only, keeping the other models' rows")
    parser.add_argument("--thread-pools", action="store_true",
                        help="measure numba's threading layers next to torch and add the "
                             "table to the existing results")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return
    if args.replot or args.thread_pools:
        data = json.loads((RESULTS / "inference.json").read_text())
        names = list(dict.fromkeys(r["model"] for r in data["rows"]))
        pools = data.get("thread_pools", [])
        if args.thread_pools:
            pools = thread_pools()
            data["machine"]["thread_pools_cpu"] = machine()["cpu"]
            data["machine"]["thread_pools_load_average"] = ", ".join(
                f"{x:.1f}" for x in os.getloadavg())
        write(data["rows"], data["skipped"], names, data["machine"]["load_average_before"],
              pools, data["machine"], data["command"], data.get("remeasured"))
        return
    if any(os.environ.get(k) != v for k, v in QUIET_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **QUIET_ENV})
    deepsparse = None if args.no_deepsparse or not DS_PYTHON.exists() else DS_PYTHON
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows, skipped = run(args.models, args.min_seconds, deepsparse)
    if args.merge:
        data = merged(rows, skipped, args.models, load_before)
        names = [n for n in MODELS if any(r["model"] == n for r in data["rows"])]
        write(data["rows"], data["skipped"], names, data["machine"]["load_average_before"],
              data["thread_pools"], data["machine"], data["command"], data["remeasured"])
        return
    write(rows, skipped, args.models, load_before, thread_pools())


if __name__ == "__main__":
    main()
