"""Do ADMM and reweighted beat gradual magnitude pruning? Equal budgets, two seeds each.

The compression benchmark (bench/compression.py) at longer budgets: LeNet-5 on
Fashion-MNIST from the same dense model, irregular at 40x and 70x (one global allocation
over conv1..fc2) and block (BLK-REW, conv2 and fc1) at 8x; ADMM (its best schedule),
reweighted, gradual magnitude (GMP) and one-shot magnitude, plus the named settings of
``variants/compression_seeds.yaml`` and the random-support control (``random``) on
request; 12 and 30 epochs after the dense model; seeds 0 and 1 (the seed sets the data
order and augmentation of the pruning and retraining stages, and random's draw; the dense
model is the same). ADMM,
reweighted and GMP prune for ``PRUNE_FRACTION`` of the budget and retrain inside the masks
for the rest with the same settings; one-shot magnitude and random spend the whole budget
retraining.

This takes hours on 2 cores, so every finished row is written to
bench/results/compression_seeds.json at once and rows already there are skipped: a run cut
short loses nothing, and the next call continues. Runs go to ``--workers`` processes with one
torch thread each; ``--order`` puts the shorter budget first, so each budget's comparison
completes before the next starts.

    python bench/compression_seeds.py [--budgets 12 30] [--seeds 0 1] [--workers 2]
    python bench/compression_seeds.py --methods admm:support reweighted:group --budgets 12
    python bench/compression_seeds.py --replot
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from common import RESULTS, command, header, machine, measured_by, write_json  # noqa: E402
from lenet_common import (  # noqa: E402
    ADAM,
    DENSE,
    RECIPE,
    SEED_RUNS,
    branch_overrides,
    dense_label,
    rule,
    seconds_per_epoch,
)
from prunekit.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from prunekit.pipeline import run_recipe  # noqa: E402
from prunekit.recipe import load_recipe  # noqa: E402

RUNS = SEED_RUNS
JSON = "compression_seeds.json"

CASES = (("irregular", 40), ("irregular", 70), ("block", 8))
METHODS = ("admm", "reweighted", "gradual", "magnitude")
PRUNE_FRACTION = 2 / 3

#: named settings per method, run as ``METHOD:NAME`` rows, and each method's best: a
#: recipe fragment per setting, documented where it is defined
_SETTINGS = yaml.safe_load((Path(__file__).resolve().parent / "variants"
                            / "compression_seeds.yaml").read_text())
VARIANTS: dict[str, dict[str, dict[str, Any]]] = _SETTINGS["variants"]
BEST: dict[str, str] = _SETTINGS["best"]
#: methods that prune once at the start and spend the whole budget retraining
ONE_SHOT = ("magnitude", "random")


def method_name(method: str) -> str:
    """``admm`` -> ``admm:geometric`` (ADMM rows always name their schedule, as before);
    the other methods keep a bare name for their first setting."""
    name, _, variant = method.partition(":")
    if name not in VARIANTS:
        raise SystemExit(f"unknown method {name!r}; valid: {', '.join(VARIANTS)}")
    variant = variant or BEST[name]
    if variant not in VARIANTS[name]:
        raise SystemExit(f"unknown {name} setting {variant!r}; valid: "
                         f"{', '.join(VARIANTS[name])}")
    return f"{name}:{variant}" if name == "admm" or variant != BEST[name] else name


def retrain_changes(method: str) -> dict[str, Any]:
    """What a setting changes in the shared retraining stage (its ``retrain`` key)."""
    name, _, variant = method.partition(":")
    return dict(VARIANTS[name][variant or BEST[name]].get("retrain", {}))


def prune_section(method: str, budget: int) -> tuple[dict[str, Any], int]:
    """The prune section of one method and the epochs it spends pruning."""
    name, _, variant = method.partition(":")
    options = dict(VARIANTS[name][variant or BEST[name]])
    options.pop("retrain", None)
    fraction = options.pop("prune_fraction", PRUNE_FRACTION)
    train = {**ADAM, **options.pop("train", {})}
    prune_epochs = 0 if name in ONE_SHOT else max(1, round(budget * fraction))
    rounds = options.pop("rounds", None)
    if name == "admm" and rounds:
        options.update(method="progressive_admm", rounds=rounds,
                       epochs_per_round=max(1, prune_epochs // rounds))
    elif name == "gradual":
        options.update(start_epoch=0, end_epoch=prune_epochs)
    options.setdefault("method", name)
    if name == "admm":
        options.setdefault("rho", 1e-3)
    options["train"] = {**train, "epochs": prune_epochs, "progress": False}
    return options, prune_epochs


def case_rule(scheme: str, ratio: int) -> dict[str, Any]:
    """The prune rule of a case; ``irregular_table`` is irregular at the per-layer rates of
    the table ``lenet5-admm-{ratio}x`` (the demo recipe's rule) instead of one global
    allocation; ``block_global`` is block with one global allocation over its layers
    instead of the same rate in each; ``dense`` (ratio 1) prunes nothing: with one-shot
    magnitude it is the dense model trained on for the whole budget, the ceiling of what a
    pruned model could reach with the same training."""
    if scheme == "dense":
        if ratio != 1:
            raise SystemExit(f"the dense case has ratio 1, not {ratio}")
        return {"layers": ["conv*", "fc*"], "scheme": "irregular", "sparsity": 0.0}
    if scheme == "irregular_table":
        return {"layers": ["conv*", "fc*"], "scheme": "irregular",
                "sparsity": f"lenet5-admm-{ratio}x"}
    if scheme == "block_global":
        return {**rule("block", ratio), "allocation": "global"}
    return rule(scheme, ratio)


#: the label of the rows measured before rows named their dense model (its file is gone)
FIRST_DENSE = "d0"


#: labels of rows written before labels digested the weights, whose weights a later dense
#: training reproduced: the dense training on a machine of this kind with AVX2 gives
#: w-772f7c8dcd, and one-shot magnitude from it (irregular 40x, 12 epochs) gave both seeds'
#: accuracy of the d-cd2c49da34 rows to the last digit (91.14, 91.10); those rows count
#: as w-772f7c8dcd's (and the two reproduced rows replaced theirs)
SAME_WEIGHTS = {"d-cd2c49da34": "w-772f7c8dcd"}


def dense_of(row: dict[str, Any]) -> str:
    label = row.get("dense_model", FIRST_DENSE)
    return SAME_WEIGHTS.get(label, label)


def run_one(method: str, scheme: str, ratio: int, budget: int, seed: int,
            runs: Path = RUNS) -> dict[str, Any]:
    prune, prune_epochs = prune_section(method, budget)
    if method.startswith("random"):
        prune["seed"] = seed  # each seed draws its own support
    retrain_epochs = budget - prune_epochs
    prune["targets"] = [case_rule(scheme, ratio)]
    overrides = branch_overrides(DENSE, prune, retrain_epochs, seed, retrain_changes(method))
    dense = dense_label()
    out = runs / dense / f"{method.replace(':', '-')}-{scheme}-{ratio}x-{budget}e-seed{seed}"
    start = time.perf_counter()
    report = run_recipe(load_recipe(RECIPE, overrides), out, resume=True, progress=False,
                        echo=lambda *_: None)
    return {
        "method": method, "scheme": scheme, "target_ratio": ratio, "epochs": budget,
        "seed": seed, "dense_model": dense, "prune_epochs": prune_epochs,
        "retrain_epochs": retrain_epochs,
        "options": {k: v for k, v in prune.items() if k != "targets"},
        **({"retrain_changes": retrain_changes(method)} if retrain_changes(method) else {}),
        "load_average": os.getloadavg()[0],
        "ratio": report["compression_ratio_weights"],
        "accuracy": report["accuracy"]["compressed"],
        "dense_accuracy": report["accuracy"]["dense"],
        "final_primal": _last_prune(report, "relative_primal"),
        "dead_channels": dead_channels(report),
        "seconds": time.perf_counter() - start,
        "seconds_per_epoch": seconds_per_epoch(report),
        "cpu": machine()["cpu"],
        "command": command(),
    }


def dead_channels(report: dict[str, Any]) -> int | None:
    """Channels the model file holds no weight for (the report counts them per group on
    the file it reads back); None where the model could not be traced."""
    counts = report.get("extra", {}).get("dead_channels")
    return None if counts is None else sum(counts.values())


def _last_prune(report: dict[str, Any], key: str) -> float | None:
    values = [r[key] for r in report.get("history") or []
              if r.get("stage") == "prune" and r.get(key) is not None]
    return values[-1] if values else None


def key(row: dict[str, Any]) -> tuple:
    """A row's identity: its dense model, then the order of :func:`plan`'s tuples."""
    return (dense_of(row), row["method"], row["scheme"], row["target_ratio"], row["epochs"],
            row["seed"])


def plan(methods: list[str], budgets: list[int], seeds: list[int],
         cases: tuple[tuple[str, int], ...] = CASES) -> list[tuple]:
    """Shorter budgets first; within one, case by case with every method and seed."""
    return [(m, s, r, b, seed) for b in budgets for s, r in cases for seed in seeds
            for m in methods]


# --------------------------------------------------------------------------- results
def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (dense model, case, budget, method): mean, both seeds, spread."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((dense_of(r), r["scheme"], r["target_ratio"], r["epochs"],
                           r["method"]), []).append(r)
    lines = []
    for (dense, scheme, ratio, epochs, method), rs in sorted(groups.items()):
        acc = [100 * r["accuracy"] for r in sorted(rs, key=lambda r: r["seed"])]
        lines.append({"dense_model": dense, "scheme": scheme, "target_ratio": ratio,
                      "epochs": epochs,
                      "method": method, "seeds": [r["seed"] for r in rs], "accuracy": acc,
                      "mean": statistics.fmean(acc), "spread": max(acc) - min(acc),
                      "dense": 100 * rs[0]["dense_accuracy"],
                      "ratio": statistics.fmean(r["ratio"] for r in rs),
                      "dead_channels": [r.get("dead_channels") for r in rs]})
    return lines


def comparisons(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dense model, case and budget with two seeds of both: the best ADMM/reweighted
    setting against the best gradual magnitude setting."""
    out = []
    for case in sorted({(x["dense_model"], x["scheme"], x["target_ratio"], x["epochs"])
                        for x in lines}):
        here = [x for x in lines if len(x["seeds"]) > 1 and
                (x["dense_model"], x["scheme"], x["target_ratio"], x["epochs"]) == case]
        ours = [x for x in here if x["method"].split(":")[0] in ("admm", "reweighted")]
        gmps = [x for x in here if x["method"].split(":")[0] == "gradual"]
        if ours and gmps:
            best = max(ours, key=lambda x: x["mean"])
            gmp = max(gmps, key=lambda x: x["mean"])
            out.append({"case": case, "best": best, "gmp": gmp,
                        "margin": best["mean"] - gmp["mean"],
                        "spread": max(best["spread"], gmp["spread"])})
    return out


def verdicts(lines: list[dict[str, Any]]) -> list[str]:
    """Per dense model, case and budget: does the best of ADMM/reweighted beat the best
    gradual magnitude setting by more than the larger of the two seed spreads? Where the
    dense case ran at that budget, the best method is also set against that ceiling."""
    out = []
    ceilings: dict[tuple[str, int], float] = {}  # the best dense setting per budget
    for x in lines:
        if x["scheme"] == "dense":
            at = (x["dense_model"], x["epochs"])
            ceilings[at] = max(ceilings.get(at, x["mean"]), x["mean"])
    for c in comparisons(lines):
        (dense, scheme, ratio, epochs), best, gmp = c["case"], c["best"], c["gmp"]
        word = "beats" if c["margin"] > c["spread"] else "does not beat"
        out.append(f"- {scheme} {ratio}x, {epochs} epochs ({dense}): {best['method']} "
                   f"{best['mean']:.2f} vs {gmp['method']} {gmp['mean']:.2f} (margin "
                   f"{c['margin']:+.2f}, seed spread {c['spread']:.2f}): {word} GMP; "
                   f"{best['mean'] - best['dense']:+.2f} vs dense"
                   + ("" if (dense, epochs) not in ceilings else
                      _against_ceiling(best["mean"], gmp["mean"] + c["spread"],
                                       ceilings[dense, epochs], epochs)))
    return out


def across_dense_models(lines: list[dict[str, Any]]) -> list[str]:
    """Per case and budget compared from more than one dense model: the margins side by
    side. A two-seed spread from one dense model understates how much a comparison varies
    (the same cell has flipped between dense models while each one's seeds agreed), so a
    claim that holds from every dense model is the one to make."""
    by_case: dict[tuple, list[dict[str, Any]]] = {}
    for c in comparisons(lines):
        by_case.setdefault(c["case"][1:], []).append(c)
    out = []
    for (scheme, ratio, epochs), cs in sorted(by_case.items()):
        if len(cs) < 2:
            continue
        wins = sum(c["margin"] > c["spread"] for c in cs)
        ahead = sum(c["margin"] > 0 for c in cs)
        out.append(f"- {scheme} {ratio}x, {epochs} epochs: ADMM/reweighted ahead from {ahead} "
                   f"of {len(cs)} dense models, by more than the seed spread from {wins} ("
                   + ", ".join(f"{c['case'][0]} {c['margin']:+.2f} / {c['spread']:.2f}"
                               for c in cs) + ")")
    return out


def support_worth(lines: list[dict[str, Any]]) -> list[str]:
    """Per dense model, case and budget with a random-support row: each method family's
    best against it. Random pruning keeps the layer split and the retraining and changes
    only which weights are kept, so a family's lead over it is what that family's choice
    of support bought; where no family leads it by more than the seed spread, no method
    could win the case by choosing weights better."""
    families = {"ADMM/reweighted": ("admm", "reweighted"), "GMP": ("gradual",),
                "one-shot magnitude": ("magnitude",)}
    out = []
    for case in sorted({(x["dense_model"], x["scheme"], x["target_ratio"], x["epochs"])
                        for x in lines if x["method"].startswith("random")}):
        here = [x for x in lines if len(x["seeds"]) > 1 and x["scheme"] != "dense" and
                (x["dense_model"], x["scheme"], x["target_ratio"], x["epochs"]) == case]
        randoms = [x for x in here if x["method"].startswith("random")]
        if not randoms:
            continue
        control = max(randoms, key=lambda x: x["mean"])
        parts = []
        for family, names in families.items():
            rows = [x for x in here if x["method"].split(":")[0] in names]
            if rows:
                best = max(rows, key=lambda x: x["mean"])
                spread = max(best["spread"], control["spread"])
                parts.append(f"{family} {best['mean']:.2f} ({best['mean'] - control['mean']:+.2f}"
                             f" / {spread:.2f})")
        dense, scheme, ratio, epochs = case
        out.append(f"- {scheme} {ratio}x, {epochs} epochs ({dense}): {control['method']} "
                   f"{control['mean']:.2f} ({', '.join(f'{a:.2f}' for a in control['accuracy'])})"
                   f"; {'; '.join(parts)}")
    return out


def _against_ceiling(best: float, needed: float, ceiling: float, epochs: int) -> str:
    """The best method against the dense model trained on for the same budget and, where it
    does not win, how close to that model a win would have to come: when a win would need
    about the ceiling itself, the case has no room to separate methods, whatever they do."""
    text = f", {best - ceiling:+.2f} vs the dense model trained on for {epochs} epochs"
    if best <= needed:
        text += (f" (beating GMP by more than the spread needs {needed:.2f}, "
                 f"{needed - ceiling:+.2f} vs that model)")
    return text


def write_results(rows: list[dict[str, Any]]) -> None:
    rows.sort(key=lambda r: (dense_of(r), r["epochs"], r["scheme"], r["target_ratio"],
                             r["method"], r["seed"]))
    write_json(JSON, rows)
    lines = summarize(rows)
    table = ["| dense model | scheme | target | epochs | method | mean (%) | seeds (%) | spread |"
             " vs dense | measured ratio | dead channels |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in lines:
        table.append(
            f"| {x['dense_model']} ({x['dense']:.2f}%) | {x['scheme']} | {x['target_ratio']}x "
            f"| {x['epochs']} | {x['method']} | "
            f"{x['mean']:.2f} | {', '.join(f'{a:.2f}' for a in x['accuracy'])} | "
            f"{x['spread']:.2f} | {x['mean'] - x['dense']:+.2f} | {x['ratio']:.1f}x | "
            f"{', '.join('-' if d is None else str(d) for d in x['dead_channels'])} |")
    atomic_write_text(
        RESULTS / "compression_seeds.md",
        header("ADMM and reweighted vs gradual magnitude: equal budgets, two seeds")
        + "\nLeNet-5 on Fashion-MNIST. Rows compare only within one dense model (`dense "
        "model`: `w-` and the first 10 hex digits of the SHA-256 of its weights, or `d-` and "
        "those of its file's for rows written before; `" + FIRST_DENSE + "` is the "
        "model of the first rows, whose file was not kept; rows labelled "
        + ", ".join(f"`{old}` count as `{new}`" for old, new in SAME_WEIGHTS.items())
        + ", the same weights, reproduced: `SAME_WEIGHTS` in the script). `epochs` = "
        "epochs after the dense model; ADMM, reweighted and gradual magnitude prune for 2/3 "
        "of them (or their setting's `prune_fraction`) and retrain inside the masks for the "
        "rest, one-shot magnitude retrains for all of them. "
        "`METHOD:NAME` rows use the settings NAME of `VARIANTS` in the script (ADMM rows always "
        "name their schedule); "
        "`irregular_table` is irregular at the per-layer rates of the table "
        "`lenet5-admm-{ratio}x` (the demo recipe's rule) instead of one global allocation; "
        "`block_global` is block with one global allocation over conv2 and fc1 instead of "
        "the same rate in each; `dense` 1x prunes nothing: its `magnitude` rows are the dense "
        "model trained on for the budget (retraining settings, `magnitude:distill` with "
        "distillation from itself), the ceiling of what pruning with that training could "
        "reach; the verdicts compare the best ADMM or reweighted row with "
        "the best gradual magnitude row (both with two seeds). `dead channels`: per seed, the "
        "channels its model file holds no weight for, as its report counts them (`-`: rows "
        "written before rows recorded it). Runs went two at a "
        "time, one torch thread each. The machine above is the one of the last write: the "
        "rows of d0 and d-cd2c49da34 ran on machines of this kind with AVX2, those of "
        "w-4a753516cd on one with AVX-512 (the dense trainings differ between them)"
        + _recorded_cpus(rows) + ".\n\n"
        + "\n".join(table) + "\n\n## Verdicts\n\n"
        + ("\n".join(verdicts(lines)) or "- no case has both seeds of every method yet")
        + "\n\n## The same case from different dense models\n\nmargin / larger seed spread "
        "per dense model:\n\n" + ("\n".join(across_dense_models(lines)) or "- none yet")
        + "\n\n## What choosing the support is worth\n\nThe best random-support row (the "
        "layer split of the global allocation and the same retraining, only the kept weights "
        "drawn at random) against each method family's best: its mean (lead over random / "
        "larger seed spread):\n\n" + ("\n".join(support_worth(lines)) or "- none yet")
        + measured_by(rows) + "\n![accuracy per case](compression_seeds.png)\n",
    )
    _plot(lines)


def _recorded_cpus(rows: list[dict[str, Any]]) -> str:
    """Where rows record their CPU (rows written since they do): which, per dense model."""
    cpus: dict[str, set[str]] = {}
    for r in rows:
        if "cpu" in r:
            cpus.setdefault(dense_of(r), set()).add(r["cpu"])
    return "".join(f"; those of {dense} on {', '.join(sorted(names))}"
                   for dense, names in sorted(cpus.items()))


def _plot(lines: list[dict[str, Any]]) -> None:
    cases = sorted({(x["dense_model"], x["scheme"], x["target_ratio"]) for x in lines})
    fig, axes = plt.subplots(1, max(len(cases), 1), figsize=(5 * max(len(cases), 1), 4),
                             squeeze=False)
    methods = sorted({x["method"] for x in lines})
    for ax, case in zip(axes[0], cases, strict=False):
        here = [x for x in lines if (x["dense_model"], x["scheme"], x["target_ratio"]) == case]
        for i, method in enumerate(methods):
            pts = sorted((x["epochs"], x["mean"], x["spread"]) for x in here
                         if x["method"] == method)
            if pts:
                e, m, s = zip(*pts, strict=True)
                ax.errorbar([v + 0.3 * i for v in e], m, yerr=[v / 2 for v in s],
                            marker="o", capsize=3, label=method)
        ax.axhline(here[0]["dense"], color="grey", linestyle="--", label="dense")
        ax.set_title(f"{case[1]} {case[2]}x, dense {case[0]}")
        ax.set_xlabel("epochs after dense")
        ax.set_ylabel("test accuracy (%), mean of seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(RESULTS / "compression_seeds.png", buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", type=int, nargs="+", default=[12, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--variants", nargs="*", default=[],
                        help="extra ADMM schedules to run as admm:NAME rows (the same "
                             "as naming them in --methods)")
    parser.add_argument("--cases", nargs="+", default=[f"{s}:{r}" for s, r in CASES],
                        help="scheme:ratio items")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    path = RESULTS / JSON
    if not path.exists():
        write_json(JSON, [])
    rows = json.loads(path.read_text())
    if args.replot:
        write_results(rows)
        return
    if not DENSE.exists():
        raise SystemExit(f"{DENSE} missing: run bench/dense_baseline.py first")
    methods = [method_name(m) for m in args.methods]
    methods += [f"admm:{v}" for v in args.variants if f"admm:{v}" not in methods]
    cases = tuple((c.split(":")[0], int(c.split(":")[1])) for c in args.cases)
    dense = dense_label()
    done = {key(r) for r in rows}
    todo = [t for t in plan(methods, args.budgets, args.seeds, cases)
            if (dense, *t) not in done]
    print(f"{len(todo)} runs to go ({len(done)} rows already there)", flush=True)
    with ProcessPoolExecutor(args.workers, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        futures = [pool.submit(run_one, *t) for t in todo]
        for future in as_completed(futures):
            row = future.result()
            # read again: another invocation may have added rows since this one started
            rows = [r for r in json.loads(path.read_text()) if key(r) != key(row)] + [row]
            write_results(rows)
            print(json.dumps({k: row[k] for k in ("method", "scheme", "target_ratio",
                                                  "epochs", "seed", "accuracy")}), flush=True)


if __name__ == "__main__":
    main()
