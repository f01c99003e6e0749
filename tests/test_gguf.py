"""A GGUF file through transformers' loader: a tiny Llama written as llama.cpp's converter
writes it (q/k rows permuted for its rotary layout, a byte-level BPE vocabulary), loaded by
prunekit, compared with the model it came from, compressed, saved and reloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from prunekit.integrations import huggingface as hf  # noqa: E402
from prunekit.oneshot import compress  # noqa: E402
from prunekit.oneshot.baselines import prune_count  # noqa: E402

HEADS, KV_HEADS, HIDDEN, LAYERS = 4, 2, 32, 2


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes (a byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of a q/k projection (rotary halves interleaved per head)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def _write_gguf(path, model, tokens: list[str], merges: list[str]) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(LAYERS):
        for ours, theirs in parts.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    state = model.state_dict()
    for ours, theirs in names.items():
        t = state[ours].float().numpy()
        if theirs.endswith("attn_q.weight"):
            t = _permute(t, HEADS)
        elif theirs.endswith("attn_k.weight"):
            t = _permute(t, KV_HEADS)
        w.add_tensor(theirs, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_loads_compresses_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    tokens = [*_byte_symbols(), "Ġt", "he", "Ġthe", "<|endoftext|>"]
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=len(tokens),
        max_position_embeddings=64, tie_word_embeddings=False, rope_theta=10000.0)
    source = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path / "tiny.Q-f32.gguf"
    _write_gguf(path, source, tokens, ["Ġ t", "h e", "Ġt he"])

    loaded = hf.load(path)
    assert loaded.causal_lm
    ids = loaded.tokenizer("the theme the")["input_ids"]
    assert len(tokens) - 2 in ids  # the merged "Ġthe"
    x = torch.randint(0, len(tokens), (2, 12))
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=x).logits, source(input_ids=x).logits,
                              atol=1e-5)

    batches = [{"input_ids": torch.randint(0, len(tokens), (2, 16))} for _ in range(2)]
    compress(loaded.model, batches, [{"layers": "model.layers.*", "types": ["Linear"],
                                      "sparsity": 0.5}], method="admm", progress=False)
    saved = hf.save(loaded.model, loaded.tokenizer, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(saved, local_files_only=True)
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, loaded.model(input_ids=x).logits,
                              atol=1e-5)
    down = again.model.layers[1].mlp.down_proj.weight
    assert int((down == 0).sum()) == prune_count(down.numel(), 0.5)
