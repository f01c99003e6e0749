"""How much do the supports that different methods and seeds keep have in common?

Reads the run directories ``bench/compression_seeds.py`` leaves under
runs/bench-seeds/<dense model>/ for one case (e.g. ``block_global-8x-12e``) and compares the
weights each retrained model keeps, layer by layer: for two runs A and B, the Jaccard index
|A and B| / |A or B| of their kept weights. Runs whose pruning stage is the same (a setting
that only changes the retraining) keep the same support: each distinct support is listed
once, with every run (and accuracy) that keeps it.

Why: if two methods keep supports that share little, yet reach the same accuracy, then the
support is not what limits that case, and a method whose advantage is a better support (ADMM)
has nothing to win there.

The run directories are not in git (each holds checkpoints): the committed tables come from
the runs of the rows ``compression_seeds.py`` wrote in the same checkout. That script skips
rows already in its JSON, so recreating the directories means running those rows again
without them (e.g. on a copy of the JSON with the rows removed).

    python bench/mask_overlap.py --case block_global-8x-12e [--dense w-4a753516cd]

writes results/mask_overlap_<case>-<dense model>.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import torch

from common import RESULTS, header, write_json
from lenet_common import SEED_RUNS, dense_label
from prunekit.files import atomic_write_text, load_checkpoint


def supports(run: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """The kept (nonzero) weights of every layer the run pruned, its test accuracy and its
    training accuracy over the last retraining epoch (how well the pruned network fits:
    two supports that fit the training set differently yet test the same show that
    capacity is not what limits the test accuracy)."""
    state = load_checkpoint(run / "retrained.pt")["state_dict"]
    report = json.loads((run / "report.json").read_text())
    pruned = sorted(layer["name"] for layer in report["layers"]
                    if layer.get("scheme") != "dense" and layer["name"] in state)
    return ({name: state[name] != 0 for name in pruned}, report["accuracy"]["compressed"],
            report["history"][-1]["train_accuracy"])


def digest(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, mask in masks.items():
        h.update(name.encode())
        h.update(mask.numpy().tobytes())
    return h.hexdigest()


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def distinct_supports(case: str, dense: str) -> list[tuple[list[tuple[str, float, float]],
                                                           dict]]:
    """Per distinct support, in run-name order: the runs that keep it (name, test and
    training accuracy) and its masks."""
    found: dict[str, tuple[list[tuple[str, float, float]], dict[str, torch.Tensor]]] = {}
    for run in sorted((SEED_RUNS / dense).glob(f"*-{case}-seed*")):
        if not (run / "retrained.pt").exists() or not (run / "report.json").exists():
            continue
        masks, accuracy, train_accuracy = supports(run)
        name = run.name.replace(f"-{case}-", " ")
        found.setdefault(digest(masks), ([], masks))[0].append((name, accuracy,
                                                                train_accuracy))
    return list(found.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="e.g. block_global-8x-12e")
    parser.add_argument("--dense", help="dense model label (default: the current one)")
    args = parser.parse_args()
    dense = args.dense or dense_label()
    found = distinct_supports(args.case, dense)
    if len(found) < 2:
        raise SystemExit(f"fewer than two distinct supports for {args.case} under "
                         f"{SEED_RUNS / dense}")
    labels = [f"S{i + 1}" for i in range(len(found))]
    pairs = []
    for (i, (_, a)), (j, (_, b)) in itertools.combinations(enumerate(found), 2):
        for layer in a:
            pairs.append({"a": labels[i], "b": labels[j], "layer": layer,
                          "kept_a": int(a[layer].sum()), "kept_b": int(b[layer].sum()),
                          "size": a[layer].numel(), "jaccard": jaccard(a[layer], b[layer])})
    stem = f"mask_overlap_{args.case}-{dense}"
    write_json(f"{stem}.json", {
        "case": args.case, "dense_model": dense,
        "supports": {label: [{"run": n, "accuracy": acc, "train_accuracy": fit}
                             for n, acc, fit in runs]
                     for label, (runs, _) in zip(labels, found, strict=True)},
        "pairs": pairs})
    lines = [header(f"Kept-weight overlap, {args.case} ({dense})"), "",
             "Each distinct support the retrained models keep, with the runs that keep it "
             "(settings that change only the retraining share their pruning stage's "
             "support). Accuracy: on the test set / on the training set over the last "
             "retraining epoch.", "", "| support | runs (accuracy %: test / training) |",
             "|---|---|"]
    for label, (runs, _) in zip(labels, found, strict=True):
        lines.append(f"| {label} | " + ", ".join(f"{n} ({100 * acc:.2f} / {100 * fit:.2f})"
                                                 for n, acc, fit in runs) + " |")
    lines += ["", "Jaccard index of two supports' kept weights per layer (1: the same). Two "
              "random supports of densities p and q would share about pq / (p + q - pq) "
              "(`random`).", "", "| A | B | layer | kept A | kept B | Jaccard | random |",
              "|---|---|---|---|---|---|---|"]
    for r in pairs:
        p, q = r["kept_a"] / r["size"], r["kept_b"] / r["size"]
        lines.append(f"| {r['a']} | {r['b']} | {r['layer']} | {r['kept_a']:,} | "
                     f"{r['kept_b']:,} | {r['jaccard']:.3f} | {p * q / (p + q - p * q):.3f} |")
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
