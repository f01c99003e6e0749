"""Atomic file writes and safe checkpoint loading.

A run that is killed (even with SIGKILL) must never leave a half-written file behind, because
``--resume`` trusts whatever it finds. Every file prunekit writes goes to a temporary file in
the same directory, is fsynced, and is then renamed over the destination: rename is atomic
on POSIX, so readers see either the old file or the new one.

Atomic writes keep a crash from corrupting a file, but not a bad disk, a partial copy or a
hand edit, and torch's own format does not notice a changed byte inside a tensor. So every
checkpoint prunekit writes ends with a SHA-256 trailer of everything before it; torch still
reads such a file as it is (it ignores bytes after the archive), and :func:`load_checkpoint`
refuses one whose digest does not match (:class:`CorruptFileError`). A resumed run never
trusts a file that fails this check.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import DataError

#: ends every checkpoint prunekit writes, followed by the SHA-256 of the bytes before it
DIGEST_MAGIC = b"\nprunekit-sha256\n"
_TRAILER = len(DIGEST_MAGIC) + 32


class CorruptFileError(DataError):
    """A file prunekit wrote fails its check (digest, CRC, truncation): never trusted."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync it, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a file that failed its check to ``NAME.corrupt`` (kept for inspection, never
    read again); returns the new path."""
    path = Path(path)
    moved = path.with_name(path.name + ".corrupt")
    os.replace(path, moved)
    return moved


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted (``.NAME.*.tmp`` in
    ``directory`` and its subfolders); they are never read, only left behind."""
    removed = []
    for tmp in Path(directory).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically, with the digest trailer (module docstring). Keep ``obj``
    to tensors, numbers, strings, lists and dicts so that :func:`load_checkpoint` can read
    it with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    body = buffer.getvalue()
    return atomic_write_bytes(path, body + DIGEST_MAGIC + hashlib.sha256(body).digest())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    verified: bool = False) -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs on load).

    A file with prunekit's digest trailer must match it; ``verified=True`` (every file a
    resumed run reads back) also refuses a file without one, so a truncated or foreign file
    is never mistaken for a finished stage. Either failure is a :class:`CorruptFileError`.
    A plain torch file (a user's pretrained weights) loads when ``verified`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    signed = len(data) >= _TRAILER and data[-_TRAILER:-32] == DIGEST_MAGIC
    if signed:
        data, digest = data[:-_TRAILER], data[-32:]
        if hashlib.sha256(data).digest() != digest:
            raise CorruptFileError(f"checkpoint {path} fails its SHA-256 check (changed or "
                                   f"damaged since it was written); it is not used")
    elif verified:
        raise CorruptFileError(f"checkpoint {path} lacks prunekit's SHA-256 trailer (truncated, "
                               f"or not written by prunekit); it is not used")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        error = CorruptFileError if signed or verified else DataError
        raise error(
            f"checkpoint {path} is corrupt or not a prunekit/torch checkpoint: {exc}"
        ) from exc
