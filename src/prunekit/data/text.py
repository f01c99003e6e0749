"""Local text for calibration and evaluation: ``.txt`` / ``.jsonl`` files, tokenized with the
model's tokenizer into fixed-length sequences.

Each file is read as UTF-8 (a ``.jsonl`` file contributes the ``text`` field of every
line), its SHA-256 recorded, and tokenized whole; a file's tokens are concatenated in file
order, with the tokenizer's end-of-sequence token between files where it has one.
Calibration draws ``samples`` windows of ``seq_len`` tokens at random start positions
(``seed``) from its files; evaluation cuts its files' tokens into consecutive windows.
Calibration and evaluation files must be disjoint: the same file named on both sides is
refused by path and by content hash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

SUFFIXES = (".txt", ".jsonl")


@dataclass
class TextFiles:
    """Token ids of some files, and where they came from."""

    ids: Tensor
    files: list[dict[str, Any]] = field(default_factory=list)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expand_files(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """The files a recipe names: each entry a path or a glob (``~`` expanded, relative to
    the current directory), globs sorted, the same file once. Every entry must name at
    least one existing ``.txt`` / ``.jsonl`` file; a mistake is one ConfigError whose key
    is the entry's index, checked before anything is read."""
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    found: dict[Path, Path] = {}
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str | os.PathLike) or not str(pattern):
            raise ConfigError(f"expected a file path or glob, got {pattern!r}", key=(str(index),))
        text = os.path.expanduser(os.fspath(pattern))
        if glob.has_magic(text):
            paths = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
            if not paths:
                raise ConfigError(f"{str(pattern)!r} matches no file", key=(str(index),))
        else:
            paths = [Path(text)]
            if not paths[0].is_file():
                raise ConfigError(f"text data file {str(pattern)!r} does not exist",
                                  key=(str(index),))
        for path in paths:
            if path.suffix not in SUFFIXES:
                raise ConfigError(f"text data files must end in {' or '.join(SUFFIXES)}: "
                                  f"{str(path)!r}", key=(str(index),))
            found.setdefault(path.resolve(), path)
    if not found:
        raise ConfigError("needs at least one file")
    return list(found.values())


def read_text(path: str | os.PathLike) -> str:
    """A file's text: the whole ``.txt``, or the ``text`` fields of a ``.jsonl``, joined."""
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise ConfigError(f"text data files must end in {' or '.join(SUFFIXES)}: {str(p)!r}")
    if not p.is_file():
        raise DataError(f"text data file {str(p)!r} does not exist")
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        return raw
    parts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(p)!r} line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{str(p)!r} line {number}: needs a string field 'text'")
        parts.append(record["text"])
    return "\n\n".join(parts)


def tokenize_files(tokenizer: Any, paths: Sequence[str | os.PathLike]) -> TextFiles:
    """All ``paths`` tokenized and concatenated (module docstring)."""
    if not paths:
        raise ConfigError("text data needs at least one file")
    eos = getattr(tokenizer, "eos_token_id", None)
    chunks: list[Tensor] = []
    files = []
    for path in paths:
        text = read_text(path)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if chunks and eos is not None:
            chunks.append(torch.tensor([eos], dtype=torch.long))
        chunks.append(torch.tensor(ids, dtype=torch.long))
        files.append({"path": str(path), "sha256": sha256(path), "tokens": len(ids)})
    return TextFiles(torch.cat(chunks), files)


def check_disjoint(calibration: Sequence[str | os.PathLike],
                   evaluation: Sequence[str | os.PathLike]) -> None:
    """Refuse a file (by resolved path or by content) on both sides."""
    cal = {Path(p).resolve(): p for p in calibration}
    for p in evaluation:
        if Path(p).resolve() in cal:
            raise ConfigError(f"text file {str(p)!r} is both calibration and evaluation data")
    hashes = {sha256(p): p for p in calibration if Path(p).is_file()}
    for p in evaluation:
        if Path(p).is_file() and sha256(p) in hashes:
            raise ConfigError(f"evaluation file {str(p)!r} has the same content as "
                              f"calibration file {str(hashes[sha256(p)])!r}")


def calibration_windows(data: TextFiles, samples: int, seq_len: int, seed: int = 0) -> Tensor:
    """``[samples, seq_len]`` windows at random starts (``seed``) in ``data``."""
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"calibration {name} must be a positive integer, got {value!r}")
    n = data.ids.numel()
    if n < seq_len:
        raise DataError(f"calibration text has {n} tokens, fewer than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seq_len + 1, (samples,), generator=g)
    return torch.stack([data.ids[s:s + seq_len] for s in starts.tolist()])


def evaluation_windows(data: TextFiles, seq_len: int, max_tokens: int | None = None) -> Tensor:
    """Consecutive ``[k, seq_len]`` windows covering ``data`` (at most ``max_tokens``)."""
    ids = data.ids if max_tokens is None else data.ids[:max_tokens]
    k = ids.numel() // seq_len
    if k < 1:
        raise DataError(f"evaluation text has {ids.numel()} tokens, fewer than "
                        f"seq_len={seq_len}")
    return ids[:k * seq_len].reshape(k, seq_len)


def perplexity(model: Any, windows: Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token cross-entropy) of a causal LM over ``windows`` (each window's
    first token has no prediction; every other token counts once)."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                x = windows[i:i + batch_size]
                logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
                target = x[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
                total += float(loss)
                count += target.numel()
    finally:
        model.train(was_training)
    return math.exp(total / count)


def mean_pooled(model: Any, windows: Tensor, attention_mask: Tensor | None = None,
                batch_size: int = 4) -> Tensor:
    """``[k, hidden]`` sentence embeddings of an encoder: the mean of its last hidden states
    over each window's tokens, weighted by ``attention_mask`` (all ones by default: the
    windows are cut from running text and hold no padding), as sentence-embedding models
    such as MiniLM pool them."""
    mask = torch.ones_like(windows) if attention_mask is None else attention_mask
    if mask.shape != windows.shape:
        raise ConfigError(f"attention_mask is {tuple(mask.shape)}, the windows are "
                          f"{tuple(windows.shape)}")
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                x, m = windows[i:i + batch_size], mask[i:i + batch_size]
                hidden = model(input_ids=x, attention_mask=m).last_hidden_state.float()
                weight = m.unsqueeze(-1).to(hidden.dtype)
                out.append((hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0))
    finally:
        model.train(was_training)
    return torch.cat(out)


def embedding_similarity(reference: Tensor, embeddings: Tensor) -> float:
    """Mean cosine similarity of each row of ``embeddings`` to the same row of
    ``reference`` (a compressed encoder's sentence embeddings against the dense model's):
    1.0 means the compressed model embeds every window in the same direction."""
    if reference.shape != embeddings.shape:
        raise ConfigError(f"embeddings of shape {tuple(embeddings.shape)} cannot be compared "
                          f"with reference embeddings of shape {tuple(reference.shape)}")
    cos = torch.nn.functional.cosine_similarity(reference.double(), embeddings.double(), dim=-1)
    return float(cos.mean())


def as_batches(windows: Tensor, batch_size: int = 1) -> list[dict[str, Tensor]]:
    """Calibration windows as model input dicts (``input_ids``) of ``batch_size`` rows."""
    return [{"input_ids": windows[i:i + batch_size]}
            for i in range(0, windows.shape[0], batch_size)]
