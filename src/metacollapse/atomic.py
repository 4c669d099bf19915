"""File I/O shared by every module: atomic output, guarded ``.npz`` reading, hashing.

Snakemake (and people) treat an existing output file as finished, so no code in this package may leave a
half-written file at a target path. Everything here writes to a temporary file in the *same directory*
(so ``os.replace`` is a rename on one filesystem, hence atomic) and moves it into place only on success.

- ``atomic_path(target)``: context manager yielding a temp path; the caller writes it by any means
  (``np.save``, ``torch.save``, ``savefig``, ...). On normal exit the temp file replaces ``target``; on an
  exception it is deleted and ``target`` is left as it was.
- ``atomic_write_bytes(target, data)``: the one-shot version for bytes.
- ``atomic_write_text(target, text)``: the same for UTF-8 text.
- ``remove_temp_files(directory)``: delete temporaries that a killed writer (SIGKILL cannot be caught) left.
- ``read_npz(path, what)``: every array of an ``.npz``; a damaged file is a ValueError naming it.
- ``sha256_file(path)`` / ``hash_file(path, algorithm)``: streaming hex digests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "hash_file",
    "read_npz",
    "remove_temp_files",
    "sha256_file",
]

_CHUNK = 1 << 20


def _temp_name(target: Path) -> Path:
    # Hidden, unique, and ending in the target's own suffix: writers such as np.save (which appends ".npy"
    # to a path without it) or savefig (which picks the format from the suffix) then behave exactly as they
    # would on the target itself. The name is not pre-created, so the final file gets the usual umask
    # permissions rather than mkstemp's 0600.
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp{target.suffix}")


# What _temp_name produces: ".<target name>.<pid>-<12 hex>.tmp<suffix>".
_TEMP_RE = re.compile(r"^\..+\.\d+-[0-9a-f]{12}\.tmp(\.[^.]*)?$")


def remove_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of ``atomic_path`` in ``directory``; return what was removed.

    A writer killed by SIGKILL leaves its temporary file behind (nothing runs to remove it). Call this only
    where no other process writes into ``directory`` at the same time, e.g. at the start of the one job that
    owns it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [path for path in directory.iterdir() if _TEMP_RE.match(path.name) and path.is_file()]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows fsync on a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or "unexpected pos" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` only if the block succeeds.

    The parent directory is created if needed. If the block raises, or leaves no file at the temporary
    path, the temporary file is removed and ``target`` is untouched (an existing file stays as it was).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file for {target}")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        # BaseException too: a KeyboardInterrupt (e.g. Snakemake cancelling a job) must not leave debris.
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _disk_full(exc):
            # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos".
            free = shutil.disk_usage(target.parent).free
            raise OSError(
                errno.ENOSPC, f"disk full while writing {target} ({free} bytes free on its filesystem)"
            ) from exc
        raise
    if fsync:
        _fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically; return ``target`` as a Path."""
    target = Path(target)
    with atomic_path(target, fsync=fsync) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return target


def atomic_write_text(target: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8, newlines written as given) to ``target`` atomically; return ``target``."""
    return atomic_write_bytes(target, text.encode("utf-8"), fsync=fsync)


def hash_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes with any ``hashlib`` algorithm, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    return hash_file(path, "sha256")


def read_npz(path: str | os.PathLike[str], what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (no pickles). ``what`` names the file's role in the error.

    np.load raises BadZipFile (not an OSError) on a truncated archive and zlib/EOF errors on damaged members;
    all of them become one ValueError naming the file, which the CLI prints as one line.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
