"""How long one global allocation (one threshold over every layer) takes on big models.

A recipe rule with ``allocation: global`` ranks the groups of all its layers together
before any training starts, so its cost is paid once per run, but on ResNet-50 or ViT-B/16
a slow ranking (a sort per step) makes the user wait before the first epoch. This times
``prunekit.targets.resolve`` of one global rule (irregular, and filter on ResNet-50) and
the hardening that follows it (``prunekit.targets.freeze``: one projection per weight)
on models with the real layer shapes and random weights.

Writes bench/results/global_allocation.{json,md}.

    python bench/global_allocation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from common import RESULTS, command, header, machine, resnet50_shapes, write_json
from prunekit.files import atomic_write_text
from prunekit.targets import freeze, resolve


def resnet50() -> nn.Module:
    """A module holding ResNet-50's conv and linear weights under their torchvision names
    (the allocation reads weights only, so the wiring does not matter)."""
    model = nn.Module()
    for name, shape in resnet50_shapes():
        parent = model
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        if len(shape) == 4:
            layer = nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)
        else:
            layer = nn.Linear(shape[1], shape[0])
        parent.add_module(leaf, layer)
    return model


def vit_b16() -> nn.Module:
    """ViT-B/16: patch embedding, 12 encoder blocks (attention with packed q/k/v, 3072-wide
    MLP), the classification head."""
    model = nn.Module()
    model.patch = nn.Conv2d(3, 768, 16, stride=16)
    model.encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True), 12,
        enable_nested_tensor=False)
    model.head = nn.Linear(768, 1000)
    return model


CASES = {
    "resnet50": (resnet50, ("irregular", "filter")),
    "vit_b16": (vit_b16, ("irregular",)),
}


def time_case(build, scheme: str, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = build()
    rule = {"layers": "*", "scheme": scheme, "sparsity": 0.9 if scheme == "irregular" else 0.5,
            "allocation": "global"}
    allocate, harden = [], []
    for _ in range(repeats):
        work = copy.deepcopy(model)
        start = time.perf_counter()
        targets = resolve(work, [rule])
        allocate.append(time.perf_counter() - start)
        start = time.perf_counter()
        freeze(work, targets)
        harden.append(time.perf_counter() - start)
    pruned = sum(int((t.param == 0).sum()) for t in targets)
    total = sum(t.param.numel() for t in targets)
    return {"scheme": scheme, "sparsity": rule["sparsity"], "layers": len(targets),
            "weights": total, "achieved": pruned / total,
            "allocate_seconds": statistics.median(allocate),
            "harden_seconds": statistics.median(harden),
            "allocate_runs": allocate, "harden_runs": harden}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for model, (build, scheme_names) in CASES.items():
        for scheme in scheme_names:
            row = {"model": model, **time_case(build, scheme, args.repeats)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_json("global_allocation.json", {"command": command(), "machine": machine(),
                                          "repeats": args.repeats, "rows": rows})
    lines = ["| model | scheme | target | weights | layers | achieved | allocate (s) |"
             " harden (s) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['scheme']} | {r['sparsity']} | {r['weights']:,} | "
              f"{r['layers']} | {r['achieved']:.4f} | {r['allocate_seconds']:.2f} | "
              f"{r['harden_seconds']:.2f} |" for r in rows]
    atomic_write_text(
        RESULTS / "global_allocation.md",
        header("Global allocation time on ResNet-50 and ViT-B/16 weight shapes")
        + f"\nMedian of {args.repeats} runs; one `allocation: global` rule over every conv, "
        "linear and attention weight (`layers: '*'`); allocate = `resolve` (the ranking), "
        "harden = `freeze` (one projection per weight). Random weights.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
