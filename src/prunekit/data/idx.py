"""Reader for the IDX format of MNIST, Fashion-MNIST and KMNIST (gzipped or not).

The header is parsed by hand so that every way a file can be damaged (wrong magic, a
truncated download, a broken gzip stream) ends in one :class:`DataError` that names the file,
instead of a reshape error far away from its cause.

IDX layout: two zero bytes, a dtype code, the number of dimensions ``d``; then ``d`` big-endian
uint32 sizes; then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

REFETCH_HINT = (
    "delete it and fetch the data again (download=True, or reinstall the "
    "distribution package that provided it)"
)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's contents, decompressed when it is gzipped (detected by content, not name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] != GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataError(f"{path} is named .gz but is not gzip data; {REFETCH_HINT}")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt gzip file {path} ({exc}); {REFETCH_HINT}") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data``; ``source`` names the file in error messages."""
    if len(data) < 4:
        raise DataError(f"{source} is too short to be an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source} is not an IDX file (bad magic number {data[:4].hex()}); {REFETCH_HINT}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{source} has unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{source} declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{source} is truncated inside its IDX header; {REFETCH_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    # Python integers: a hostile header's sizes must not wrap around to a small total
    expected = header_size + math.prod(dims) * dtype.itemsize
    if len(data) < expected:
        raise DataError(
            f"{source} is truncated: header declares shape {dims} ({expected} bytes) but the "
            f"file holds {len(data)} bytes; {REFETCH_HINT}"
        )
    if len(data) > expected:
        raise DataError(
            f"{source} has {len(data) - expected} unexpected bytes after the data of shape "
            f"{dims}; {REFETCH_HINT}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_size)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a writable numpy array of native byte order."""
    return parse_idx(read_bytes(path), str(path))


def idx_filenames(train: bool) -> tuple[str, str]:
    """Base names (without ``.gz``) of the image and label files of one split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_file(directory: Path, base: str) -> Path | None:
    """``directory/base`` or ``directory/base.gz``, whichever exists (raw first)."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(directory: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, H, W]`` uint8 and labels ``[N]`` of one split, checked against each other."""
    image_base, label_base = idx_filenames(train)
    image_path = find_idx_file(directory, image_base)
    label_path = find_idx_file(directory, label_base)
    if image_path is None or label_path is None:
        missing = image_base if image_path is None else label_base
        raise DataError(f"{directory} has no {missing}[.gz]")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3:
        raise DataError(f"{image_path} should hold images [N, H, W], found shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{label_path} should hold labels [N], found shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"image/label count mismatch: {image_path} has {len(images)} images but "
            f"{label_path} has {len(labels)} labels; {REFETCH_HINT}"
        )
    return images, labels
