"""Joint pruning + quantization (ADMM-NN): accuracy vs model-file size, LeNet-5 / Fashion-MNIST.

Every row goes through the product's own path (``Run`` on recipes/lenet5-fashion-joint.yaml
with overrides) and ends in a ``model.pkz`` whose size on disk is the row's size. Rows that
share stages share them for real: a row starts from copies of the stage artifacts
(``dense.pt``, ``pruned.pt``, ``retrained.pt``) of the run it branches from and resumes, so
all rows start from the same dense model and the same pruned models.

Rows, at each pruning level (``--levels``) and each bit width (``--bits``, all layers):

- ``ours``: ADMM prune -> masked retrain -> ADMM quantize -> straight-through retrain;
- ``ours-progressive``: the same with ADMM-NN's progressive-fixing retraining;
- ``admm+ptq``: the same pruned model, post-training rounding (no training);
- ``gmp+ptq``: gradual magnitude pruning with the same budget as ADMM prune + retrain,
  then post-training rounding;
- ``ours-mixed`` (``ours-progressive-mixed``): with ADMM-NN's LeNet-5 bits (conv1 7,
  conv2 6, fc1 4, fc2 6);
- ``dense-int8``: the dense model rounded to 8 bits (what a user would pick instead).

Biases are kept at float16 in every quantized row (``quantize.rest: float16``). The size ratio
is dense fp32 state-dict bytes / ``.pkz`` bytes. Writes bench/results/joint.{json,md,png} and
copies the best file within 1 point of dense to bench/results/lenet5-joint.pkz.

    python bench/joint.py [--workers 2] [--bits 8 6 4 3 2] [--replot]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import RESULTS, command, header, machine, measured_by, write_json  # noqa: E402
from prunekit.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from prunekit.pipeline import Run  # noqa: E402
from prunekit.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/lenet5-fashion-joint.yaml"
RUNS = ROOT / "runs/bench-joint"
MIXED = {"conv1": 7, "conv2": 6, "fc1": 4, "fc2": 6}


@dataclass(frozen=True)
class Level:
    """A pruning level: per-layer rates, and the stages' epochs and ADMM options where they
    differ from the joint recipe's (the same for every method at the level)."""

    rates: Any
    epochs: dict[str, int] = field(default_factory=dict)  # prune, retrain, quantize, qretrain
    admm: dict[str, Any] = field(default_factory=dict)


#: the systematic-ADMM paper's 71x table, a sparser one, and the 71x table with the longer
#: schedule of the reference code (rho x1.3 per update, more epochs before hardening)
LEVELS = {
    "71x": Level("lenet5-admm-71x"),
    "110x": Level({"conv1": 0.8, "conv2": 0.94, "fc1": 0.995, "fc2": 0.94}),
    "71x-long": Level("lenet5-admm-71x",
                      {"prune": 12, "retrain": 8, "quantize": 4, "qretrain": 6},
                      {"rho_growth": 1.3}),
    # fewer weights pruned, fewer bits each: at ~200x the file holds ~8k weights at 3 bits
    # or ~6k at 4-6 bits, so the pruned model can keep more of its accuracy
    "52x-long": Level({"conv1": 0.7, "conv2": 0.9, "fc1": 0.987, "fc2": 0.9},
                      {"prune": 12, "retrain": 8, "quantize": 4, "qretrain": 6},
                      {"rho_growth": 1.3}),
}
ADAM = {"optimizer": "adam", "weight_decay": 0.0, "progress": False}
COLORS = {"ours": "tab:blue", "ours-mixed": "tab:purple", "ours-progressive": "tab:cyan",
          "ours-progressive-mixed": "tab:pink", "admm+ptq": "tab:orange",
          "gmp+ptq": "tab:green", "dense-int8": "tab:red"}


def _train(section: dict[str, Any], level: Level, stage: str) -> dict[str, Any]:
    epochs = level.epochs.get(stage, section["epochs"])
    return {**section, "epochs": epochs, "progress": False}


def prune_section(method: str, level: Level) -> dict[str, Any]:
    """ADMM as in the joint recipe, or gradual magnitude with the same epochs."""
    prune = {**load_recipe(RECIPE)["prune"], **level.admm}
    train = _train(prune["train"], level, "prune")
    if method == "gradual":
        prune = {"method": "gradual", "start_epoch": 0, "end_epoch": train["epochs"]}
    prune["targets"] = [{"layers": ["conv*", "fc*"], "scheme": "irregular",
                         "sparsity": level.rates}]
    prune["train"] = train
    return prune


def quantize_section(method: str, bits: Any, level: Level | None = None,
                     mode: str | None = None) -> dict[str, Any]:
    """ADMM quantization as in the joint recipe (``mode``: its retraining mode, default the
    recipe's), or post-training rounding."""
    base = dict(load_recipe(RECIPE)["quantize"])
    if method == "admm":
        retrain = _train(base["retrain"], level, "qretrain")
        return {**base, "bits": bits, "rest": "float16",
                "train": _train(base["train"], level, "quantize"),
                "retrain": retrain if mode is None else {**retrain, "mode": mode}}
    return {"method": "ptq", "bits": bits, "rest": "float16"}


def overrides(prune: dict | None, quantize: dict | None, level: Level | None = None
              ) -> list[str]:
    retrain = _train(load_recipe(RECIPE)["retrain"], level or Level(None), "retrain")
    return ["train.progress=false", f"prune={json.dumps(prune)}",
            f"retrain={json.dumps(retrain if prune else None)}",
            f"quantize={json.dumps(quantize)}"]


def run(name: str, settings: list[str], branch_from: Path | None,
        stages: tuple[str, ...], remeasure: bool = False) -> dict[str, Any]:
    """One run in RUNS/name, starting from copies of ``stages`` of ``branch_from``;
    ``remeasure`` writes its model file and report again (the trained stages are kept)."""
    out = RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    for artifact in ("model.pkz", "report.json") if remeasure else ():
        (out / artifact).unlink(missing_ok=True)
    for stage in stages if branch_from else ():
        if not (out / stage).exists():
            shutil.copy2(branch_from / stage, out / stage)
    start = time.perf_counter()
    report = Run(load_recipe(RECIPE, settings), out, progress=False,
                 echo=lambda *_: None).run(resume=True)
    return {"run": name, "report": report, "seconds": time.perf_counter() - start,
            "file": str(out / "model.pkz"), "file_bytes": os.path.getsize(out / "model.pkz")}


def row(result: dict[str, Any], method: str, level: str | None, bits: Any) -> dict[str, Any]:
    report = result["report"]
    dense_bytes = report["bytes"]["dense"]
    epochs_by_stage: dict[str, int] = {}
    for record in report.get("history") or []:
        epochs_by_stage[record["stage"]] = epochs_by_stage.get(record["stage"], 0) + 1
    assert report["bytes"]["compressed"] == result["file_bytes"]
    return {
        "method": method, "level": level, "bits": bits,
        "accuracy": report["accuracy"]["compressed"],
        "dense_accuracy": report["accuracy"]["dense"],
        "dense_bytes": dense_bytes, "compressed_bytes": result["file_bytes"],
        "size_ratio": dense_bytes / result["file_bytes"],
        "weights_ratio": report["compression_ratio_weights"],
        "epochs_after_dense": {k: v for k, v in epochs_by_stage.items() if k != "pretrain"},
        "file": os.path.relpath(result["file"], ROOT),
        "parts": report["bytes"]["parts"],
        "layers": [{"name": layer["name"], "bits": layer["bits"],
                    "sparsity": layer["sparsity"], "index": layer["storage"],
                    "bytes": layer["parts"]} for layer in report["layers"]],
        "seconds": result["seconds"], "command": command(),
    }


def plan(levels: list[str], bits: list[int]) -> list[tuple]:
    """(row name, method, level, bits, settings, branch run, stages to copy)."""
    dense_copy = ("dense.pt",)
    pruned_copy = ("dense.pt", "pruned.pt", "retrained.pt")
    bases = [("dense", "dense", None, None, overrides(None, None), None, ())]
    branches = [("dense-int8", "dense-int8", None, 8, overrides(None, quantize_section("ptq", 8)),
                 "dense", dense_copy)]
    for name in levels:
        level = LEVELS[name]
        for method, tag in (("admm", "admm"), ("gradual", "gmp")):
            bases.append((f"{tag}-{name}", None, name, None,
                          overrides(prune_section(method, level), None, level), "dense",
                          dense_copy))
        for b in [*bits, "mixed"]:
            width = MIXED if b == "mixed" else b
            suffix = "-mixed" if b == "mixed" else ""
            for tag, method, mode in (("ours", "ours", None),
                                      ("oursprog", "ours-progressive", "progressive")):
                branches.append((f"{tag}-{name}-{b}", method + suffix, name, width,
                                 overrides(prune_section("admm", level),
                                           quantize_section("admm", width, level, mode), level),
                                 f"admm-{name}", pruned_copy))
            if b == "mixed":
                continue
            for tag, method in (("admm", "admm+ptq"), ("gmp", "gmp+ptq")):
                prune_method = "admm" if tag == "admm" else "gradual"
                branches.append((f"{tag}-ptq-{name}-{b}", method, name, b,
                                 overrides(prune_section(prune_method, level),
                                           quantize_section("ptq", b), level),
                                 f"{tag}-{name}", pruned_copy))
    return bases + branches


def only(todo: list[tuple], names: set[str]) -> list[tuple]:
    """The items of ``todo`` named in ``names`` and every run they branch from."""
    by_name = {t[0]: t for t in todo}
    unknown = sorted(names - set(by_name))
    if unknown:
        raise SystemExit(f"no such run: {unknown}; runs: {sorted(by_name)}")
    wanted, stack = set(), list(names)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack += [b for b in (by_name[name][5],) if b is not None]
    return [t for t in todo if t[0] in wanted]


def execute(todo: list[tuple], workers: int, rows: list[dict[str, Any]],
            remeasure: bool = False) -> list[dict]:
    """Run ``todo`` (bases first: a branch waits for the run it copies from)."""
    done = set() if remeasure else {r["run"] for r in rows if "run" in r}
    # a finished run whose directory is gone (a fresh checkout) runs again if a row to run
    # branches from it: its stage artifacts are what that row starts from
    needed = {t[5] for t in todo if t[0] not in done}
    while missing := {n for n in needed & done if not (RUNS / n / "model.pkz").exists()}:
        done -= missing
        needed |= {t[5] for t in todo if t[0] in missing}
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        pending = {}
        ready = set(done)
        queue = [t for t in todo if t[0] not in done]
        while queue or pending:
            for item in [t for t in queue if t[5] is None or t[5] in ready]:
                if len(pending) >= workers:
                    break
                queue.remove(item)
                name, _, _, _, settings, branch, stages = item
                future = pool.submit(run, name, settings,
                                     None if branch is None else RUNS / branch, stages, remeasure)
                pending[future] = item
            if not pending:
                raise SystemExit(f"nothing can run: {[t[0] for t in queue]}")
            future = next(as_completed(pending))
            name, method, level, bits, *_ = pending.pop(future)
            result = future.result()
            ready.add(name)
            if method is not None:
                new = {**row(result, method, level, bits), "run": name}
                rows = [r for r in rows if r.get("run") != name] + [new]
                print(json.dumps({k: new[k] for k in ("run", "accuracy", "compressed_bytes",
                                                      "size_ratio")}), flush=True)
                write_results(rows)
    return rows


def best_within(rows: list[dict[str, Any]], points: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["method"].startswith("ours")
          and 100 * (r["dense_accuracy"] - r["accuracy"]) <= points]
    return max(ok, key=lambda r: r["size_ratio"]) if ok else None


def three_bit_margins(rows: list[dict[str, Any]]) -> str:
    """Per pruning level: ours at 3 bits against the better post-training rounding."""
    lines = []
    for level in sorted({r["level"] for r in rows if r["level"]}):
        at3 = {r["method"]: 100 * r["accuracy"] for r in rows
               if r["level"] == level and r["bits"] == 3}
        if "ours" in at3 and ("admm+ptq" in at3 or "gmp+ptq" in at3):
            ptq = max(at3.get("admm+ptq", 0.0), at3.get("gmp+ptq", 0.0))
            lines.append(f"- {level}, 3 bits: ours {at3['ours']:.2f}% vs the better "
                         f"post-training rounding {ptq:.2f}% ({at3['ours'] - ptq:+.2f} points)")
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]]) -> None:
    rows = sorted(rows, key=lambda r: (str(r["level"]), r["method"], str(r["bits"])))
    best = best_within(rows, 1.0)
    payload: dict[str, Any] = {"machine": machine(), "rows": rows}
    if best is not None:
        if (ROOT / best["file"]).exists():  # a run being remeasured has none for a moment
            shutil.copy2(ROOT / best["file"], RESULTS / "lenet5-joint.pkz")
        payload.update({k: best[k] for k in ("dense_bytes", "compressed_bytes", "size_ratio",
                                              "accuracy", "dense_accuracy", "layers")})
        payload["file"] = "bench/results/lenet5-joint.pkz"
        payload["best_run"] = best["run"]
    write_json("joint.json", payload)

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, color in COLORS.items():
        for level, marker in [*zip(LEVELS, "osDvP*", strict=False), (None, "^")]:
            pts = sorted((r["size_ratio"], 100 * r["accuracy"]) for r in rows
                         if r["method"] == method and r["level"] == level)
            if pts:
                ax.plot(*zip(*pts, strict=True), "-", marker=marker, color=color,
                        label=f"{method} {level or ''}".strip())
    dense = [100 * r["dense_accuracy"] for r in rows]
    if dense:
        ax.axhline(dense[0], color="grey", linestyle="--", label="dense")
        ax.axhline(dense[0] - 1, color="grey", linestyle=":", label="dense - 1 point")
    ax.set_xscale("log")
    ax.set_xlabel("dense fp32 bytes / .pkz file bytes (measured on disk)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LeNet-5 / Fashion-MNIST: joint pruning + quantization")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(RESULTS / "joint.png", buf.getvalue())

    lines = ["| method | pruning | bits | accuracy (%) | delta | file bytes | size ratio |"
             " weights ratio | epochs after dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bits = "7/6/4/6" if isinstance(r["bits"], dict) else (r["bits"] or "-")
        epochs = ", ".join(f"{k} {v}" for k, v in r["epochs_after_dense"].items()) or "0"
        lines.append(f"| {r['method']} | {r['level'] or '-'} | {bits} | "
                     f"{100 * r['accuracy']:.2f} | "
                     f"{100 * (r['accuracy'] - r['dense_accuracy']):+.2f} | "
                     f"{r['compressed_bytes']:,} | {r['size_ratio']:.0f}x | "
                     f"{r['weights_ratio']:.1f}x | {epochs} |")
    summary = ("No row of ours is within 1.0 point of dense." if best is None else
               f"Best file within 1.0 point of dense: `{best['run']}`, "
               f"{best['compressed_bytes']:,} bytes ({best['size_ratio']:.0f}x smaller than "
               f"the dense fp32 state dict), {100 * best['accuracy']:.2f}% "
               f"(dense {100 * best['dense_accuracy']:.2f}%); the file is committed as "
               f"[lenet5-joint.pkz](lenet5-joint.pkz).")
    summary += "\n\n" + three_bit_margins(rows)
    atomic_write_text(
        RESULTS / "joint.md",
        header("Joint pruning + quantization, LeNet-5 on Fashion-MNIST")
        + "\nEvery row is a run of recipes/lenet5-fashion-joint.yaml with overrides, from the "
        "same dense model (and, for the quantized rows, the same pruned model). File bytes "
        "are `os.path.getsize` of the row's `model.pkz` (weights only: activations stay "
        "float; biases float16 in quantized rows); size ratio = dense fp32 state-dict bytes "
        "/ file bytes; weights ratio = pruned layers' weights / nonzeros. Runs went two at "
        "a time, one torch thread each; the commands that trained them are listed at the end "
        "(`--remeasure` writes every row's model file and report again with the current "
        "code, reusing the trained stages).\n\n"
        + summary + "\n\n" + "\n".join(lines)
        + measured_by(rows)
        + "\n![accuracy vs file size](joint.png)\n",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--bits", type=int, nargs="*", default=[8, 6, 4, 3, 2])
    parser.add_argument("--levels", nargs="*", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the table and plot from joint.json")
    parser.add_argument("--remeasure", action="store_true",
                        help="write every finished run's model file and report again with "
                             "this code (no training: the stage artifacts are reused)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="train exactly these rows again (by run name, e.g. "
                             "oursprog-71x-long-mixed), with the runs they branch from")
    args = parser.parse_args()
    existing = RESULTS / "joint.json"
    rows = json.loads(existing.read_text())["rows"] if existing.exists() else []
    if args.replot:
        write_results(rows)
        return
    todo = plan(args.levels, args.bits)
    if args.runs is not None:
        todo = only(todo, set(args.runs))
        rows = [r for r in rows if r.get("run") not in args.runs]
    execute(todo, args.workers, rows, args.remeasure)
    print(f"machine: {machine()['cpu']}")


if __name__ == "__main__":
    main()
