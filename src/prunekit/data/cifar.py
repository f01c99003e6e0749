"""Reader for CIFAR-10/100 in the "python version" pickle format.

Those files are pickles, and ``pickle.load`` on a file from the internet can run any code.
They only ever hold dicts, lists, strings, ints and numpy arrays, so they are read with an
unpickler that resolves nothing but numpy's array and dtype reconstruction; any other global
in the stream is refused with a :class:`DataError`.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .idx import REFETCH_HINT

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR100_TRAIN = ("train",)
CIFAR100_TEST = ("test",)

IMAGE_SHAPE = (3, 32, 32)
IMAGE_SIZE = 3 * 32 * 32


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1: Python 3 pickles (protocol < 3) store an
    array's raw bytes as a latin-1 string that this call turns back into bytes."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR pickle may name, taken from the running numpy so that
    pickles written by numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) both load."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    return table


_ALLOWED = _allowed_globals()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (CIFAR files hold only numpy arrays)"
            ) from None


def safe_unpickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only builtin containers and numpy arrays."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # truncated streams raise EOFError, ValueError, UnpicklingError...
        raise DataError(f"corrupt or unsafe CIFAR pickle {source} ({exc}); {REFETCH_HINT}") from exc


def _get(batch: dict, key: str, source: str) -> Any:
    for k in (key, key.encode("ascii")):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR pickle {source} has no {key!r} entry; {REFETCH_HINT}")


def read_cifar_batch(path: str | os.PathLike, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle file -> images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {path}: {exc}") from exc
    batch = safe_unpickle(raw, str(path))
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR pickle {path} holds a {type(batch).__name__}, not a dict")
    data = np.asarray(_get(batch, "data", str(path)))
    labels = np.asarray(_get(batch, label_key, str(path)))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_SIZE:
        raise DataError(
            f"CIFAR pickle {path}: 'data' should be uint8 [N, {IMAGE_SIZE}], "
            f"found {data.dtype} {data.shape}; {REFETCH_HINT}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR pickle {path}: {label_key!r} should be a list of integers")
    if len(labels) != len(data):
        raise DataError(
            f"image/label count mismatch in {path}: {len(data)} images, {len(labels)} labels; "
            f"{REFETCH_HINT}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def _detect(root: Path) -> tuple[str, Path]:
    """Which CIFAR lives in ``root`` (given directly or as its parent)."""
    for directory in (root, root / CIFAR10_DIR, root / CIFAR100_DIR):
        has10 = (directory / CIFAR10_TEST[0]).is_file() or (directory / "data_batch_1").is_file()
        has100 = (directory / CIFAR100_TEST[0]).is_file() or (directory / "train").is_file()
        if has10 and not has100:
            return "cifar10", directory
        if has100 and not has10:
            return "cifar100", directory
        if has10 and has100:
            raise ConfigError(f"{directory} holds both CIFAR-10 and CIFAR-100 files; pass name=")
    raise DataError(
        f"no CIFAR files in {root} (expected {CIFAR10_DIR}/ or {CIFAR100_DIR}/ or their files)"
    )


def read_cifar(
    root: str | os.PathLike, train: bool, coarse: bool = False, *, name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR split: images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64.

    ``root`` is the directory holding the batch files, or its parent. ``name`` (``"cifar10"``
    or ``"cifar100"``) picks the data set; by default it is recognised from the file names.
    ``coarse`` selects CIFAR-100's 20 super-class labels instead of its 100 fine labels.
    """
    root = Path(root)
    if name is None:
        name, directory = _detect(root)
    elif name in ("cifar10", "cifar100"):
        sub = CIFAR10_DIR if name == "cifar10" else CIFAR100_DIR
        directory = root / sub if (root / sub).is_dir() else root
    else:
        raise ConfigError(f"read_cifar name must be 'cifar10' or 'cifar100', got {name!r}")
    if name == "cifar10":
        if coarse:
            raise ConfigError("coarse labels exist only for cifar100")
        files, label_key, num_classes = (CIFAR10_TRAIN if train else CIFAR10_TEST), "labels", 10
    else:
        files = CIFAR100_TRAIN if train else CIFAR100_TEST
        label_key = "coarse_labels" if coarse else "fine_labels"
        num_classes = 20 if coarse else 100
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise DataError(f"{directory} lacks CIFAR file(s) {', '.join(missing)}")
    parts = [read_cifar_batch(directory / f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels in {directory} fall outside [0, {num_classes}) "
            f"(found {labels.min()}..{labels.max()}); {REFETCH_HINT}"
        )
    return images, labels
