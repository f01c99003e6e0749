"""Pretrained Hugging Face models through recipes: ``model: {hf: PATH}`` with ``data: {name:
text}`` and a ``oneshot`` section, run by ``prunekit compress`` and the Python pipeline, on a
tiny random Llama and a tiny random BERT-like encoder saved offline (no download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from processes import env  # noqa: E402
from prunekit import artifacts  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.data import text  # noqa: E402
from prunekit.errors import ConfigError, DataError  # noqa: E402
from prunekit.oneshot.baselines import prune_count  # noqa: E402
from prunekit.pipeline import run_recipe  # noqa: E402
from prunekit.recipe import load_recipe  # noqa: E402
from test_oneshot_hf import _prose, _tokenizer  # noqa: E402  (the tiny offline tokenizer)

SEQ = 32
ROOT = Path(__file__).resolve().parents[1]

RECIPE = """\
name: tiny-hf
seed: 0
model: {hf: %(model)s}
data:
  name: text
  calibration: ["%(dir)s/cal_*.txt"]
  evaluation: ["%(dir)s/ev.jsonl"]
  seq_len: %(seq)d
  batch_size: 2
oneshot:
  method: %(method)s
  calibration: {samples: 8}
  targets: [{layers: "%(layers)s", types: [Linear], sparsity: 0.5}]
"""


def _save(model, directory):
    model.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random Llama (causal LM) and a tiny random BERT (encoder) saved with
    save_pretrained, and calibration / evaluation text."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128))
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)
    data = root / "text"
    data.mkdir()
    _prose(data / "cal_a.txt", 0)
    _prose(data / "cal_b.txt", 1)
    _prose(data / "ev.jsonl", 2, jsonl=True)
    return {"llama": _save(llama, root / "llama"), "bert": _save(bert, root / "bert"),
            "text": data}


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, models):
    """One finished run of the Llama recipe (magnitude: the fastest method), its recipe
    and its report."""
    root = tmp_path_factory.mktemp("llama_run")
    recipe = write(root, models)
    report = run_recipe(load_recipe(recipe), root / "run", progress=False, echo=lambda _: None)
    return {"recipe": recipe, "out": root / "run", "report": report}


def write(tmp_path, models, kind="llama", method="magnitude", extra="", **changes):
    values = {"model": models[kind], "dir": models["text"], "seq": SEQ, "method": method,
              "layers": "model.layers.*" if kind == "llama" else "encoder.layer.*"}
    body = RECIPE % {**values, **changes} + extra
    path = tmp_path / "hf.yaml"
    path.write_text(body)
    return path


def eval_windows(models):
    tok = _tokenizer()
    return text.evaluation_windows(text.tokenize_files(tok, [models["text"] / "ev.jsonl"]), SEQ)


def target_weights(model, prefix):
    return {n: p for n, p in model.named_parameters()
            if n.startswith(prefix) and n.endswith(".weight") and p.dim() == 2}


def test_prunekit_compress_runs_a_llama_recipe_end_to_end(tmp_path, models):
    recipe = write(tmp_path, models, method="sparsegpt")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "prunekit", "compress", str(recipe), "--out",
                           str(out), "--no-progress"], env=env(), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dense perplexity (lower is better) before compression" in done.stdout
    # the save_pretrained directory: transformers reloads it, every target exactly at 50%
    again = transformers.AutoModelForCausalLM.from_pretrained(out / "model-hf",
                                                              dtype=torch.float32)
    weights = target_weights(again, "model.layers.")
    assert len(weights) == 14  # 7 Linears in each of the 2 blocks
    for name, w in weights.items():
        assert int((w == 0).sum()) == prune_count(w.numel(), 0.5), name
    # perplexity before (the source model) and after (the reloaded directory), measured again
    windows = eval_windows(models)
    dense = transformers.AutoModelForCausalLM.from_pretrained(models["llama"],
                                                              dtype=torch.float32)
    report = json.loads((out / "report.json").read_text())
    assert report["perplexity"]["dense"] == pytest.approx(
        text.perplexity(dense, windows, batch_size=2), rel=1e-5)
    assert report["perplexity"]["compressed"] == pytest.approx(
        text.perplexity(again, windows, batch_size=2), rel=1e-5)
    assert [(r["stage"], r["when"]) for r in report["stage_perplexity"]] == [
        ("dense", "before compression"), ("oneshot", "after compression")]
    md = (out / "report.md").read_text()
    assert "Perplexity (dense -> compressed; lower is better)" in md
    assert "ccuracy" not in md and "accuracy" not in done.stdout.lower()
    # model.pkz rebuilds the architecture from its recorded config: same outputs
    loaded = artifacts.load(out / "model.pkz")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=windows[:2]).logits,
                              again(input_ids=windows[:2]).logits, atol=1e-5)


def test_report_reads_the_run_and_export_refuses_clearly(tmp_path, llama_run, capsys):
    assert main(["report", str(llama_run["out"])]) == 0
    shown = capsys.readouterr().out
    assert "Perplexity (dense -> compressed; lower is better)" in shown
    assert "dense" in shown and "ccuracy" not in shown
    assert main(["export", str(llama_run["out"]), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "model-hf/" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_encoder_is_measured_by_embedding_similarity(tmp_path, models):
    lines: list[str] = []
    report = run_recipe(load_recipe(write(tmp_path, models, kind="bert", method="admm")),
                        tmp_path / "run", progress=False, echo=lines.append)
    out = tmp_path / "run"
    again = transformers.AutoModel.from_pretrained(out / "model-hf", dtype=torch.float32)
    weights = target_weights(again, "encoder.layer.")
    assert len(weights) == 12  # q, k, v, attention output, intermediate, output per layer
    for name, w in weights.items():
        assert int((w == 0).sum()) == prune_count(w.numel(), 0.5), name
    windows = eval_windows(models)
    dense = transformers.AutoModel.from_pretrained(models["bert"], dtype=torch.float32)
    expected = text.embedding_similarity(text.mean_pooled(dense, windows),
                                         text.mean_pooled(again, windows))
    assert report["similarity"]["dense"] == 1.0
    assert report["similarity"]["compressed"] == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 1
    assert "perplexity" not in report
    assert any("embedding similarity to the dense model after compression" in line
               for line in lines)
    assert type(artifacts.load(out / "model.pkz").model).__name__ == "BertModel"


def test_a_run_resumes_and_refuses_another_plan(llama_run):
    recipe, out, first = llama_run["recipe"], llama_run["out"], llama_run["report"]
    lines: list[str] = []
    again = run_recipe(load_recipe(recipe), out, resume=True, progress=False,
                       echo=lines.append)
    for stage, artifact in (("oneshot", "oneshot.pt"), ("export", "model.pkz"),
                            ("hf", "model-hf")):
        assert f"resume: stage {stage} is finished ({artifact})" in lines
    assert again["perplexity"] == first["perplexity"]
    assert again["bytes"]["compressed"] == first["bytes"]["compressed"]
    with pytest.raises(ConfigError, match="another plan: oneshot.targets.0.sparsity was 0.5"):
        run_recipe(load_recipe(recipe, ["oneshot.targets.0.sparsity=0.6"]), out,
                   resume=True, progress=False, echo=lambda _: None)


#: recipes of pretrained models: they name files that bench/prepare_oneshot.sh installs, so
#: they live apart from recipes/*.yaml, which run anywhere on synthetic data
SHIPPED = sorted((ROOT / "recipes" / "pretrained").glob("*.yaml"))


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_hf_recipe_runs_on_a_tiny_model(recipe, tmp_path, models):
    """The recipe as shipped, with the tiny Llama and its text in place of the real model
    and files (windows shortened to the tiny model's)."""
    sets = [f"model.hf={models['llama']}", f"data.calibration=[{models['text']}/cal_a.txt]",
            f"data.evaluation=[{models['text']}/ev.jsonl]", f"data.seq_len={SEQ}",
            "data.eval_tokens=null", f"oneshot.calibration.seq_len={SEQ}",
            "oneshot.calibration.samples=4"]
    report = run_recipe(load_recipe(recipe, sets), tmp_path / "run", progress=False,
                        echo=lambda _: None)
    assert report["perplexity"]["compressed"] > 1
    assert (tmp_path / "run" / "model-hf" / "config.json").is_file()
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp_path / "run" / "model-hf", *(tmp_path / "run" / "model-hf").iterdir()]:
        usual = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == usual, path  # not mkdtemp's 0700 / 0600


def test_calibration_defaults_come_from_the_data_and_the_seed(tmp_path, models, monkeypatch):
    monkeypatch.setenv("HOME", str(models["llama"].parent))
    plan = load_recipe(write(tmp_path, models, model="~/llama")).plan
    assert plan.oneshot.calibration == {"samples": 8, "seq_len": SEQ, "seed": 0}
    assert plan.to_dict()["model"] == {"hf": "~/llama", "causal_lm": None}
    assert [p.name for p in plan.data.files["calibration"]] == ["cal_a.txt", "cal_b.txt"]


@pytest.mark.parametrize("case", ["missing path", "hf and name", "overlap", "unknown key",
                                  "retrain", "no files", "zoo model", "image data",
                                  "text keys"])
def test_bad_inputs_are_one_clear_error_before_any_work(tmp_path, models, case):
    body = write(tmp_path, models).read_text()
    ev = f'evaluation: ["{models["text"]}/ev.jsonl"]'
    cal = f'calibration: ["{models["text"]}/cal_*.txt"]'
    edits = {
        "missing path": (f"hf: {models['llama']}", "hf: /nonexistent/model",
                         r"hf\.yaml:3: model\.hf: .*does not exist"),
        "hf and name": (f"hf: {models['llama']}", f"hf: {models['llama']}, name: lenet5",
                        r"hf\.yaml:3: model\.name: cannot be given with model\.hf"),
        "overlap": (ev, f'evaluation: ["{models["text"]}/cal_b.txt"]',
                    r"data\.evaluation: text file .*cal_b\.txt.* both calibration and "
                    r"evaluation"),
        "unknown key": (cal, cal.replace("calibration", "calibraton"),
                        r"data\.calibraton: unknown key 'calibraton' "
                        r"\(did you mean 'calibration'\?\)"),
        "retrain": ("oneshot:", "retrain: {epochs: 1}\noneshot:",
                    r"retrain: is not supported with a Hugging Face model"),
        "no files": (cal, cal.replace("cal_*", "nothing_*"),
                     r"data\.calibration\.0: .*matches no file"),
        "zoo model": (f"{{hf: {models['llama']}}}", "{name: lenet5}",
                      r"data\.name: text data calibrates and evaluates a Hugging Face model"),
        "image data": (body[body.index("data:"):body.index("oneshot:")],
                       "data: {name: fashion_mnist}\n",
                       r"data\.name: a Hugging Face model \(model\.hf\) is calibrated and "
                       r"evaluated on text"),
        "text keys": ("name: text", "name: fashion_mnist",
                      r"data\.calibration: is a key of text data"),
    }
    old, new, message = edits[case]
    assert old in body
    path = tmp_path / "hf.yaml"
    path.write_text(body.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        run_recipe(load_recipe(path), tmp_path / "run", progress=False, echo=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_a_missing_hf_extra_is_named_before_any_work(tmp_path, models, monkeypatch):
    import importlib.util  # noqa: PLC0415

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "transformers" else real(name, *args))
    with pytest.raises(ConfigError, match=r"hf\.yaml:3: model\.hf: .*the hf extra: pip install "
                                          r"'prunekit\[hf\]'"):
        load_recipe(write(tmp_path, models))


def test_text_calibration_keys_are_refused_for_image_data(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: lenet5}\ndata: {name: synthetic}\noneshot:\n"
                    "  calibration: {samples: 8, seq_len: 16}\n  targets: [{sparsity: 0.5}]\n")
    with pytest.raises(ConfigError, match=r"oneshot\.calibration\.seq_len: applies to text "
                                          r"calibration only"):
        load_recipe(path)


def test_text_files_expand_globs_in_order_once(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("w1 w2")
    found = text.expand_files([str(tmp_path / "*.txt"), str(tmp_path / "a.txt"),
                               str(tmp_path / "c.jsonl")])
    assert [p.name for p in found] == ["a.txt", "b.txt", "c.jsonl"]
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"\.txt or \.jsonl") as info:
        text.expand_files([str(tmp_path / "a.txt"), str(tmp_path / "d.csv")])
    assert info.value.key == ("1",)
    with pytest.raises(DataError):  # reading a file that vanished is a data error
        text.read_text(tmp_path / "gone.txt")


class _Hidden(torch.nn.Module):
    """An 'encoder' whose last hidden state is a fixed tensor, to check the pooling."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids, attention_mask):
        return transformers.modeling_outputs.BaseModelOutput(
            last_hidden_state=self.hidden[input_ids[:, 0]])


def test_mean_pooling_weights_tokens_by_the_attention_mask():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)  # 3 windows of 5 tokens, width 4
    windows = torch.arange(3).unsqueeze(1).repeat(1, 5)  # row i selects hidden[i]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]])
    pooled = text.mean_pooled(_Hidden(hidden), windows, mask, batch_size=2)
    for i in range(3):
        keep = mask[i].bool()
        assert torch.allclose(pooled[i], hidden[i][keep].mean(0), atol=1e-6)
    assert text.embedding_similarity(pooled, pooled) == pytest.approx(1.0)
    assert text.embedding_similarity(pooled, -2 * pooled) == pytest.approx(-1.0)
    rotated = torch.stack([pooled[:, 1], -pooled[:, 0], pooled[:, 2], pooled[:, 3]], 1)
    expected = sum(float(torch.dot(a, b) / (a.norm() * b.norm()))
                   for a, b in zip(pooled.double(), rotated.double(), strict=True)) / 3
    assert text.embedding_similarity(pooled, rotated) == pytest.approx(expected, abs=1e-9)
