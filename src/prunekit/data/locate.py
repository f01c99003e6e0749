"""Where a data set's files are, and fetching them when (and only when) the user asks.

A ``root`` the caller passes (a recipe's ``data.root``) is the only place searched: files
found elsewhere would be another copy than the one the user pointed at, so a root without
them is an error (or, with ``download=True``, where they are downloaded to). Without a
root, the look-up order is, first match wins:

1. each directory in ``$PRUNEKIT_DATA`` (``os.pathsep``-separated),
2. ``~/.cache/prunekit``,
3. system locations such as ``/usr/share/datasets/fashion-mnist`` (Debian's
   ``dataset-fashion-mnist`` package).

Within each of these the files may sit in a subdirectory named after the data set
(``fashion_mnist/``, torchvision's ``FashionMNIST/raw/``, ``cifar-10-batches-py/``) or directly
in it; the named subdirectories are tried first so a shared directory can hold several sets.

Downloads go to the root, else the first writable directory of 1-2, are checked against
the MD5 sums that torchvision publishes for the same files, and are written atomically, so
an interrupted or corrupted download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import DataError
from ..files import atomic_write_bytes
from .cifar import (
    CIFAR10_DIR,
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    CIFAR100_DIR,
    CIFAR100_TEST,
    CIFAR100_TRAIN,
)
from .idx import find_idx_file, idx_filenames
from .info import canonical_name

ENV_VAR = "PRUNEKIT_DATA"
SYSTEM_ROOT = Path("/usr/share/datasets")

# Subdirectories of a root tried (in order) before the root itself.
SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw", "MNIST"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"),
    "kmnist": ("kmnist", "KMNIST/raw", "KMNIST"),
    "cifar10": (CIFAR10_DIR, f"cifar10/{CIFAR10_DIR}", "cifar10"),
    "cifar100": (CIFAR100_DIR, f"cifar100/{CIFAR100_DIR}", "cifar100"),
}

# Directories under SYSTEM_ROOT that distribution packages use for each data set.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "kmnist": ("kmnist",),
    "cifar10": ("cifar10", "cifar-10"),
    "cifar100": ("cifar100", "cifar-100"),
}

APT_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}


@dataclass(frozen=True)
class Resource:
    """One file to download. For an archive, ``members`` are the paths inside it to extract
    (relative to the download root); otherwise the file itself is saved under
    ``<root>/<DOWNLOAD_SUBDIR[name]>/``."""

    url: str
    md5: str
    members: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _idx_resources(base_url: str, md5s: tuple[str, str, str, str]) -> tuple[Resource, ...]:
    names = (*idx_filenames(True), *idx_filenames(False))
    return tuple(Resource(f"{base_url}{n}.gz", md5) for n, md5 in zip(names, md5s, strict=True))


# Official sources and the MD5 sums torchvision checks for the same files.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": _idx_resources(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    "fashion_mnist": _idx_resources(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
    "kmnist": _idx_resources(
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
    ),
    "cifar10": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            tuple(f"{CIFAR10_DIR}/{f}" for f in (*CIFAR10_TRAIN, *CIFAR10_TEST)),
        ),
    ),
    "cifar100": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            tuple(f"{CIFAR100_DIR}/{f}" for f in (*CIFAR100_TRAIN, *CIFAR100_TEST)),
        ),
    ),
}

# Where plain (non-archive) downloads of each data set go, relative to the chosen root.
DOWNLOAD_SUBDIR = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "kmnist": "kmnist"}


def search_roots(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """User-writable roots in look-up order, each with a label saying where it came from:
    the ``root`` given, alone, or else ``$PRUNEKIT_DATA``'s and the user cache."""
    if root is not None:
        return [("root argument", Path(root).expanduser())]
    roots: list[tuple[str, Path]] = []
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if part.strip():
            roots.append((f"${ENV_VAR}", Path(part).expanduser()))
    roots.append(("user cache", Path.home() / ".cache" / "prunekit"))
    return roots


def system_dirs(name: str) -> list[Path]:
    return [SYSTEM_ROOT / d for d in SYSTEM_DIRS.get(canonical_name(name), ())]


def candidate_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Every directory that may hold ``name``'s files, in the order they are tried."""
    name = canonical_name(name)
    bases = [p for _, p in search_roots(root)] + ([] if root is not None else system_dirs(name))
    out: list[Path] = []
    for base in bases:
        for sub in SUBDIRS[name]:
            out.append(base / sub)
        out.append(base)
    return out


def required_files(name: str, train: bool) -> list[str]:
    """Human-readable names of the files one split needs (for messages)."""
    name = canonical_name(name)
    if name == "cifar10":
        return list(CIFAR10_TRAIN if train else CIFAR10_TEST)
    if name == "cifar100":
        return list(CIFAR100_TRAIN if train else CIFAR100_TEST)
    return [f"{base}[.gz]" for base in idx_filenames(train)]


def has_split(name: str, directory: Path, train: bool) -> bool:
    """Whether ``directory`` holds every file of one split of ``name``."""
    name = canonical_name(name)
    if name.startswith("cifar"):
        return all((directory / f).is_file() for f in required_files(name, train))
    return all(find_idx_file(directory, base) is not None for base in idx_filenames(train))


def find_dir(name: str, root: str | os.PathLike | None = None, train: bool = True) -> Path | None:
    """The first directory that holds ``name``'s files for the split, or None."""
    for directory in candidate_dirs(name, root):
        if has_split(name, directory, train):
            return directory
    return None


def locate_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
) -> Path:
    """The directory holding ``name``'s files; downloads them first if ``download`` and
    they are nowhere to be found. Raises a DataError explaining how to get them otherwise."""
    name = canonical_name(name)
    if name not in SUBDIRS:
        raise DataError(f"data set {name!r} has no files to locate")
    found = find_dir(name, root, train)
    if found is not None:
        return found
    if download:
        download_dataset(name, root)
        found = find_dir(name, root, train)
        if found is not None:
            return found
    raise DataError(missing_message(name, root, train))


def missing_message(name: str, root: str | os.PathLike | None, train: bool) -> str:
    split = "training" if train else "test"
    files = f"{name} {split} files ({', '.join(required_files(name, train))})"
    subdirs = ", ".join(s + "/" for s in SUBDIRS[name])
    host = RESOURCES[name][0].url.split("/")[2]
    if root is not None:
        where = Path(root).expanduser()
        state = "" if where.is_dir() else " (no such directory)"
        return "\n".join([
            f"{files} not found in root {where}{state} nor in its subdirectories {subdirs}",
            "A root is the only place searched, so that no other copy is read instead:",
            "  - point root (data.root) at the directory holding the files,",
            f"  - or pass download=True (data.download: true) to fetch them from {host} "
            f"into it,",
            f"  - or leave root out to search ${ENV_VAR}, ~/.cache/prunekit and system "
            f"locations.",
        ])
    lines = [f"{files} not found.",
             f"Searched (each directory itself and its subdirectories {subdirs}):"]
    for label, path in search_roots(root):
        lines.append(f"  {path}  ({label})")
    for path in system_dirs(name):
        lines.append(f"  {path}  (system)")
    lines.append("To get the data:")
    if name in APT_PACKAGES:
        lines.append(f"  - sudo apt-get install {APT_PACKAGES[name]}  (Debian/Ubuntu)")
    lines.append(f"  - pass download=True to fetch it from {host} into the first writable root")
    lines.append("  - or pass root=DIR (or set $PRUNEKIT_DATA) to a directory holding the files")
    return "\n".join(lines)


def fetch(url: str, timeout: float = 60.0) -> bytes:
    """The bytes at ``url``. Kept as a module-level function so tests can replace it."""
    request = urllib.request.Request(url, headers={"User-Agent": f"prunekit/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def writable_root(root: str | os.PathLike | None = None) -> Path:
    """The first root (``root``, ``$PRUNEKIT_DATA``, ``~/.cache/prunekit``) we can write to."""
    tried = []
    for _, path in search_roots(root):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            tried.append(str(path))
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
        tried.append(str(path))
    raise DataError(f"no writable directory to download into (tried {', '.join(tried)})")


def _fetch_verified(resource: Resource) -> bytes:
    print(f"prunekit: downloading {resource.url}", file=sys.stderr)
    try:
        data = fetch(resource.url)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        raise DataError(
            f"could not download {resource.url}: {exc}; check the network, or pass root= "
            "pointing at a copy of the files"
        ) from exc
    got = md5_hex(data)
    if got != resource.md5:
        raise DataError(
            f"checksum mismatch for {resource.url}: MD5 {got}, expected {resource.md5} "
            f"({len(data)} bytes); nothing was saved. Retry, or fetch the file by hand "
            "and pass root="
        )
    return data


def _extract_members(archive: bytes, resource: Resource, target: Path) -> None:
    """Write only the expected regular files of a tar archive, each atomically."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for member in resource.members:
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataError(f"{resource.url} does not contain {member}") from None
                handle = tar.extractfile(info) if info.isfile() else None
                if handle is None:
                    raise DataError(f"{member} in {resource.url} is not a regular file")
                atomic_write_bytes(target / member, handle.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot unpack {resource.url}: {exc}") from exc


def download_dataset(name: str, root: str | os.PathLike | None = None) -> Path:
    """Fetch every file of ``name`` that the chosen root lacks; returns that root.

    Each file is verified before anything is written, and written atomically, so after a
    failure the root holds only complete, verified files.
    """
    name = canonical_name(name)
    if name not in RESOURCES:
        raise DataError(f"data set {name!r} cannot be downloaded")
    target = writable_root(root)
    for resource in RESOURCES[name]:
        if resource.members:
            if all((target / m).is_file() for m in resource.members):
                continue
            _extract_members(_fetch_verified(resource), resource, target)
        else:
            path = target / DOWNLOAD_SUBDIR[name] / resource.filename
            if path.is_file():
                continue
            atomic_write_bytes(path, _fetch_verified(resource))
    return target
