"""A tiny randomly initialised Hugging Face Llama end to end (no download): load from a
save_pretrained directory, local text calibration, one-shot compression, perplexity on
held-out text, save back and reload with transformers."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from prunekit.data import text  # noqa: E402
from prunekit.errors import ConfigError, DataError  # noqa: E402
from prunekit.integrations import huggingface as hf  # noqa: E402
from prunekit.oneshot import compress  # noqa: E402
from prunekit.oneshot.baselines import prune_count  # noqa: E402
from prunekit.oneshot.capture import GramHooks  # noqa: E402

WORDS = [f"w{i}" for i in range(120)]


def _tokenizer():
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                eos_token="<eos>")


def _tiny_llama(directory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return model


def _prose(path, seed, n=3000, jsonl=False):
    g = torch.Generator().manual_seed(seed)
    # a little structure (a word tends to follow its neighbour) so a model can be judged
    ids = torch.cumsum(torch.randint(-2, 3, (n,), generator=g), 0) % len(WORDS)
    words = " ".join(WORDS[i] for i in ids.tolist())
    if jsonl:
        half = len(words) // 2
        path.write_text(json.dumps({"text": words[:half]}) + "\n"
                        + json.dumps({"text": words[half:]}) + "\n")
    else:
        path.write_text(words)
    return path


def test_tiny_llama_compress_evaluate_save_reload(tmp_path):
    _tiny_llama(tmp_path / "dense")
    loaded = hf.load(tmp_path / "dense")
    assert loaded.causal_lm
    model, tok = loaded.model, loaded.tokenizer
    cal_file = _prose(tmp_path / "cal.txt", 0)
    ev_file = _prose(tmp_path / "ev.jsonl", 1, jsonl=True)
    text.check_disjoint([cal_file], [ev_file])
    cal, ev = text.tokenize_files(tok, [cal_file]), text.tokenize_files(tok, [ev_file])
    assert cal.files[0]["sha256"] == hashlib.sha256(cal_file.read_bytes()).hexdigest()
    windows = text.evaluation_windows(ev, 32)
    dense_ppl = text.perplexity(model, windows)
    batches = text.as_batches(text.calibration_windows(cal, 8, 32, seed=0), batch_size=2)
    rules = [{"layers": "model.layers.*", "types": ["Linear"], "sparsity": 0.5}]
    result = compress(model, batches, rules, method="admm", progress=False)
    assert len(result.layers) == 14  # 7 Linears in each of the 2 decoder blocks
    for name, param in model.named_parameters():
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            assert int((param == 0).sum()) == prune_count(param.numel(), 0.5), name
    assert all(r.error <= r.magnitude_error + 1e-6 for r in result.layers)
    ppl = text.perplexity(model, windows)
    assert 1.0 < ppl < 10 * dense_ppl
    out = hf.save(model, tok, tmp_path / "compressed")
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    x = windows[:2]
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, model(input_ids=x).logits, atol=1e-5)
    assert int((again.model.layers[0].mlp.down_proj.weight == 0).sum()) == prune_count(
        64 * 128, 0.5)


def test_attention_projections_share_one_gram_matrix(tmp_path):
    model = _tiny_llama(tmp_path / "m")
    block = model.model.layers[0]
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    modules = {n: block.get_submodule(n) for n in names}
    with GramHooks(modules) as hooks, torch.no_grad():
        model(input_ids=torch.randint(0, 128, (2, 16)))
        model(input_ids=torch.randint(0, 128, (2, 16)))
    groups = sorted(sorted(g) for g in hooks.shared())
    assert groups == sorted([["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
                             ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                             ["mlp.down_proj"]])
    assert hooks.grams["self_attn.q_proj"].rows == 64  # each token counted once


def test_text_files_checked(tmp_path):
    a = _prose(tmp_path / "a.txt", 0, n=50)
    copy = tmp_path / "copy.txt"
    copy.write_bytes(a.read_bytes())
    with pytest.raises(ConfigError, match="both calibration and evaluation"):
        text.check_disjoint([a], [a])
    with pytest.raises(ConfigError, match="same content"):
        text.check_disjoint([a], [copy])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2"}\n{"body": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        text.read_text(bad)
    with pytest.raises(ConfigError, match=r"\.txt or \.jsonl"):
        text.read_text(tmp_path / "x.csv")
    data = text.tokenize_files(_tokenizer(), [a])
    first = text.calibration_windows(data, 4, 8, seed=3)
    assert first.shape == (4, 8)
    assert torch.equal(first, text.calibration_windows(data, 4, 8, seed=3))
    with pytest.raises(DataError, match="fewer than seq_len"):
        text.calibration_windows(data, 1, 10_000)


def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        hf.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        hf.load(tmp_path / "empty")
