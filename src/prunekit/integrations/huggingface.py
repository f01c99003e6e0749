"""Hugging Face models: load a local directory or GGUF file, save back as a directory.

``load(path)`` reads a ``save_pretrained`` directory (safetensors or ``pytorch_model.bin``
weights; the bin is read by transformers with ``weights_only``) or a ``.gguf`` file
(dequantised by transformers' GGUF loader), always as float32 and never from the network
(``local_files_only``). A causal LM loads with its language-model head (perplexity needs
it); any other architecture loads as ``AutoModel`` (an encoder: sentence embeddings).
``save(model, tokenizer, directory)`` writes a directory transformers loads again: the
compressed weights are dense tensors holding their zeros (safetensors), written to a
temporary directory and moved into place, so a failed save leaves no half directory.

``transformers`` is imported inside the functions: the core never imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError


def _transformers() -> Any:
    try:
        import transformers  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("Hugging Face models need the hf extra: pip install "
                          "'prunekit[hf]' (transformers, gguf, accelerate, safetensors)") from exc
    return transformers


@dataclass
class Pretrained:
    """A loaded model, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    source: str
    causal_lm: bool


def _locate(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(directory, gguf file name or None)`` for a directory or a ``.gguf`` file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Hugging Face model path {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ConfigError(f"a Hugging Face model is a directory or a .gguf file, got "
                              f"{str(p)!r}")
        return str(p.parent), p.name
    if not (p / "config.json").is_file():
        raise DataError(f"{str(p)!r} has no config.json: not a save_pretrained directory")
    return str(p), None


def _is_causal(config: Any) -> bool:
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))


def _forget_gguf(model: Any) -> None:
    """A GGUF file is dequantised on load, so the model holds plain float32 tensors; drop
    transformers' note that it came quantised, which would refuse ``save_pretrained``."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and "gguf" in type(quantizer).__name__.lower():
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config


def load(path: str | os.PathLike, *, causal_lm: bool | None = None) -> Pretrained:
    """The model (float32, eval mode) and tokenizer at ``path`` (module docstring).
    ``causal_lm`` forces the head choice; by default it follows the config's architecture
    (a GGUF file is always a causal LM)."""
    import torch  # noqa: PLC0415

    tf = _transformers()
    directory, gguf = _locate(path)
    extra: dict[str, Any] = {"local_files_only": True}
    if gguf is not None:
        extra["gguf_file"] = gguf
    config = tf.AutoConfig.from_pretrained(directory, **extra)
    causal = (gguf is not None or _is_causal(config)) if causal_lm is None else causal_lm
    cls = tf.AutoModelForCausalLM if causal else tf.AutoModel
    model = cls.from_pretrained(directory, dtype=torch.float32, **extra)
    if gguf is not None:
        _forget_gguf(model)
    model.eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(directory, **extra)
    return Pretrained(model, tokenizer, str(path), causal)


def save(model: Any, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write ``model`` (and ``tokenizer`` unless None) as a ``save_pretrained`` directory,
    atomically: a temporary sibling directory renamed into place."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _usual_modes(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _usual_modes(directory: Path) -> None:
    """The modes a plain ``mkdir`` / ``open`` would give (the umask's): ``mkdtemp`` makes
    the directory 0700 and some writers make their files 0600, which would hide a saved
    model from the other users of a shared machine."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


# ------------------------------------------------------------------ recipes and model files
def require() -> None:
    """Refuse (``ConfigError`` naming the ``hf`` extra) when transformers is not installed,
    without importing it: a recipe is checked before any work, and importing transformers
    takes seconds."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("Hugging Face models need the hf extra: pip install "
                          "'prunekit[hf]' (transformers, gguf, accelerate, safetensors)")


def check_path(path: str | os.PathLike) -> Path:
    """``path`` (``~`` expanded) if it is a ``save_pretrained`` directory (with a
    config.json) or a ``.gguf`` file, else one ConfigError saying which it is not; nothing
    is loaded."""
    p = Path(path).expanduser()
    try:
        _locate(p)
    except (ConfigError, DataError) as exc:
        raise ConfigError(str(exc)) from None
    return p


def architecture(model: Any, causal_lm: bool) -> dict[str, Any]:
    """What rebuilds ``model``'s architecture without its weights: its config as plain JSON
    values (``config.json``'s content, less the private ``_*`` entries such as the local
    path it was loaded from) and whether it has a language-model head. A model file
    records this, so its weights can be loaded back with no access to the source model."""
    import json  # noqa: PLC0415

    config = json.loads(model.config.to_json_string(use_diff=False))
    return {"config": {k: v for k, v in config.items() if not k.startswith("_")},
            "causal_lm": bool(causal_lm)}


def from_architecture(spec: Any) -> Any:
    """A freshly initialised model (float32, eval mode) of the architecture
    :func:`architecture` recorded: ``AutoModelForCausalLM.from_config`` for a causal LM,
    ``AutoModel.from_config`` otherwise. Its weights are meant to be replaced."""
    import torch  # noqa: PLC0415

    if not (isinstance(spec, dict) and isinstance(spec.get("config"), dict)
            and isinstance(spec["config"].get("model_type"), str)):
        raise DataError("the Hugging Face architecture record is malformed (it needs a "
                        "config with a model_type)")
    tf = _transformers()
    config_dict = dict(spec["config"])
    kind = config_dict["model_type"]
    if kind not in tf.CONFIG_MAPPING:
        raise DataError(f"this transformers ({tf.__version__}) does not know the model type "
                        f"{kind!r}")
    config = tf.CONFIG_MAPPING[kind].from_dict(config_dict)
    cls = tf.AutoModelForCausalLM if spec.get("causal_lm") else tf.AutoModel
    model = cls.from_config(config, dtype=torch.float32)
    return model.eval()
