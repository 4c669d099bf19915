"""Omniglot data: download, split-list verification, preprocessing to arrays, and loading.

This module owns every file under ``data/`` that the pipeline produces (see ``docs/CONTRACTS.md``):

- ``data/raw/images_{background,evaluation}.zip``: written by :func:`download_omniglot`, checksum-verified.
  The source is the official upstream unless a mirror is given (argument, or the ``METACOLLAPSE_OMNIGLOT_MIRROR``
  environment variable); :func:`make_mirror` turns a folder of the two zips into such a mirror.
- ``data/processed/{split}.npy`` (uint8 ``[classes, 20, 28, 28]``, strokes = 1, background = 0) and
  ``data/processed/{split}_classes.txt`` (one ``Alphabet/characterNN/rotDDD`` per line, in array order):
  written by :func:`prepare_splits` from the raw zips and the committed Vinyals split lists
  (``data/splits/vinyals/``, verified against their ``SHA256SUMS``).
- Reading them back: :func:`load_split` (validated arrays for training/evaluation) and :func:`data_info`.

Preprocessing follows the original Prototypical Networks loader (jakesnell/prototypical-networks,
``protonets/data/omniglot.py``): open the 105x105 1-bit PNG, rotate it by ``DDD`` degrees counter-clockwise,
resize to 28x28 with PIL (nearest neighbour, PIL's only filter for mode "1"), and invert so strokes are 1.
Rotations by multiples of 90 degrees of a square image are exact pixel permutations, so we use
``Image.transpose(ROTATE_90/180/270)``, which is what ``Image.rotate`` itself does for these angles.

**Deliberate difference from the original loader.** The original converts the image with
``np.array(...)`` and then applies ``.transpose(0, 1)``, swapping height and width, so its tensors show every
character reflected about the main diagonal. We do not transpose: our arrays are upright, as drawn.
Because the same fixed reflection would be applied to every image of every class (and the reflection of a
90-degree rotation is again one of the four rotations of the reflected character), the set of classes and the
few-shot task distribution are the same up to that fixed reflection, and the benchmark is unchanged in
distribution. Class ``X/rot090`` here is the upright character rotated 90 degrees counter-clockwise, so
``array[X/rot090] == np.rot90(array[X/rot000])`` exactly (nearest resizing 105 -> 28 commutes with the
rotations; the tests check this on the real data).

Every output is written atomically (:mod:`metacollapse.atomic`), so a failure never leaves a partial file, and
the outputs are byte-deterministic. All data problems raise :class:`DataError` with a message that names the
file (zip, entry, split list, URL) and, for checksum problems, the expected and actual digests.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from metacollapse.atomic import atomic_path, atomic_write_text, hash_file

__all__ = [
    "IMAGES_PER_CLASS",
    "IMAGE_SIZE",
    "MIRROR_ENV",
    "RAW_IMAGE_SIZE",
    "REFERENCE_SHA256",
    "SPLITS",
    "UPSTREAM_ENV",
    "UPSTREAM_MD5",
    "UPSTREAM_URL",
    "ZIP_NAMES",
    "DataError",
    "data_info",
    "download_omniglot",
    "load_split",
    "make_mirror",
    "parse_checksum_file",
    "prepare_splits",
]

log = logging.getLogger(__name__)

ZIP_NAMES: tuple[str, str] = ("images_background.zip", "images_evaluation.zip")
UPSTREAM_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# The md5s of the original 2015 zips, as pinned by torchvision.datasets.Omniglot.
UPSTREAM_MD5: dict[str, str] = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
# sha256 of the deterministic rebuild of the two zips that the project's reference mirror holds: the same
# 32,460 original PNG files, stored uncompressed (its MANIFEST.md documents how they were built and checked).
REFERENCE_SHA256: dict[str, str] = {
    "images_background.zip": "5e40902b4b72dcec6d87732eb8e8c0862f2c92b579cf264e65fc7a0954e80d47",
    "images_evaluation.zip": "bcc0b44a73cc146a6739d98c0004e3fc70173968e567278fb429b3dd55342400",
}
# Where download_omniglot finds its source when no mirror argument is given.
MIRROR_ENV = "METACOLLAPSE_OMNIGLOT_MIRROR"
# Replaces the official upstream (URL and md5s) for testing and for private copies of the upstream files.
UPSTREAM_ENV = "METACOLLAPSE_OMNIGLOT_UPSTREAM"
SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")
IMAGES_PER_CLASS = 20
RAW_IMAGE_SIZE = 105
IMAGE_SIZE = 28
CHECKSUM_FILE = "SHA256SUMS"
MD5_FILE = "MD5SUMS"
_DIGEST_LENGTH = {"md5": 32, "sha256": 64}

_ROTATIONS: dict[str, Image.Transpose | None] = {
    "000": None,
    "090": Image.Transpose.ROTATE_90,  # counter-clockwise, same as Image.rotate(90)
    "180": Image.Transpose.ROTATE_180,
    "270": Image.Transpose.ROTATE_270,
}
_CLASS_RE = re.compile(r"^(?P<alphabet>[^/\s][^/]*)/(?P<character>character\d+)/rot(?P<rot>000|090|180|270)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
# Everything zipfile / zlib can raise on a damaged archive or entry.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
# Everything PIL can raise on a damaged image (PIL raises SyntaxError for some malformed PNG chunks).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(RuntimeError):
    """A data file is missing, unreachable, corrupt, or does not match its expected checksum or layout."""


# ----------------------------------------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------------------------------------


def parse_checksum_file(text: str, source: str) -> dict[str, str]:
    """Parse ``sha256sum`` output (``<hex>  <name>`` or ``<hex> *<name>`` per line) into ``{name: hex}``.

    Blank lines and ``#`` comments are ignored; ``source`` is only used in error messages.
    """
    sums: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _HEX_RE.match(parts[0]):
            raise DataError(f"{source}: line {lineno} is not '<hex digest>  <file name>': {raw!r}")
        digest, name = parts[0].lower(), parts[1].strip()
        name = name.removeprefix("*").removeprefix("./")
        if name in sums and sums[name] != digest:
            raise DataError(f"{source}: conflicting checksums for {name!r}")
        sums[name] = digest
    return sums


# ----------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------


def _base_url(location: str, what: str) -> str:
    """A URL prefix ending in '/' for a local folder, ``file://`` or ``http(s)://`` URL (``what`` names it)."""
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme in ("http", "https", "file"):
        base = location
    elif scheme and len(scheme) > 1:  # one letter would be a Windows drive, i.e. a local path
        raise DataError(f"unsupported {what} {location!r}: use a local folder, a file:// or an http(s):// URL")
    else:
        base = Path(location).expanduser().resolve().as_uri()
    return base if base.endswith("/") else base + "/"


def _open_url(url: str) -> http.client.HTTPResponse:
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - schemes are checked by the caller


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Source:
    base: str  # URL prefix ending in '/'
    algorithm: str  # "md5" or "sha256"
    expected: dict[str, str]  # zip name -> hex digest
    description: str  # for messages


def _fetch_checksums(base: str, file_name: str, algorithm: str, description: str) -> dict[str, str]:
    """The ``algorithm`` digests of both zips from the checksum file ``base + file_name``."""
    url = base + file_name
    try:
        with _open_url(url) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, http.client.HTTPException, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"cannot read {file_name} from {description} ({url}): {_reason(exc)}; it is needed for "
            f"the expected {algorithm} of {', '.join(ZIP_NAMES)} (nothing was downloaded)"
        ) from exc
    sums = parse_checksum_file(text, url)
    # Check every entry before downloading anything.
    for name in ZIP_NAMES:
        if name not in sums:
            raise DataError(
                f"no checksum for {name} in {url}: expected {algorithm} unknown, actual not computed "
                f"(entries present: {sorted(sums)})"
            )
        if len(sums[name]) != _DIGEST_LENGTH[algorithm]:
            raise DataError(
                f"{url}: the checksum of {name} has {len(sums[name])} hex digits, expected "
                f"{_DIGEST_LENGTH[algorithm]} for {algorithm}"
            )
    return {name: sums[name] for name in ZIP_NAMES}


def _configured_source(mirror: str | None) -> _Source:
    """The source ``download_omniglot`` uses: see its docstring. Reads the source's checksum file, if any."""
    mirror = str(mirror).strip() if mirror else os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        base = _base_url(mirror, "mirror")
        description = f"mirror {mirror!r}"
        return _Source(base, "sha256", _fetch_checksums(base, CHECKSUM_FILE, "sha256", description), description)
    override = os.environ.get(UPSTREAM_ENV, "").strip()
    if override:
        base = _base_url(override, "upstream")
        description = f"upstream {base} (set by {UPSTREAM_ENV})"
        return _Source(base, "md5", _fetch_checksums(base, MD5_FILE, "md5", description), description)
    return _Source(UPSTREAM_URL, "md5", dict(UPSTREAM_MD5), f"upstream {UPSTREAM_URL} (md5 pinned by torchvision)")


def _download_verified(url: str, target: Path, algorithm: str, expected: str) -> None:
    """Stream ``url`` into a temp file next to ``target`` while hashing; verify; then move it into place."""
    what = f"{target.name} from {url}"
    try:
        resp = _open_url(url)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(
            f"cannot download {what}: {_reason(exc)}; expected {algorithm} {expected}, actual: none "
            f"(nothing received; {target} left as it was)"
        ) from exc
    digest = hashlib.new(algorithm)
    received = 0
    with resp:
        length_header = resp.headers.get("Content-Length")
        expected_len = int(length_header) if length_header and length_header.isdigit() else None
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as fh:
                    while chunk := resp.read(_CHUNK):
                        digest.update(chunk)
                        fh.write(chunk)
                        received += len(chunk)
                actual = digest.hexdigest()
                if expected_len is not None and received != expected_len:
                    raise DataError(
                        f"truncated download of {what}: received {received} of {expected_len} bytes; "
                        f"expected {algorithm} {expected}, actual {actual} (partial file removed)"
                    )
                if actual != expected:
                    raise DataError(
                        f"checksum mismatch for {what}: expected {algorithm} {expected}, actual {actual} "
                        f"({received} bytes; downloaded file removed)"
                    )
        except (OSError, http.client.HTTPException) as exc:
            # IncompleteRead, connection reset, timeout mid-stream, disk full...
            raise DataError(
                f"download of {what} failed after {received} bytes: {_reason(exc)}; expected {algorithm} "
                f"{expected}, actual: incomplete (partial file removed)"
            ) from exc


class _Digests:
    """Lazily computed digests of one file, each algorithm hashed at most once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, str] = {}

    def __getitem__(self, algorithm: str) -> str:
        if algorithm not in self._done:
            self._done[algorithm] = hash_file(self.path, algorithm)
        return self._done[algorithm]


def _known_good(digests: _Digests, name: str) -> str | None:
    """Which source-independent reference the file matches: the 2015 original or the reference rebuild."""
    if digests["md5"] == UPSTREAM_MD5[name]:
        return f"md5 {UPSTREAM_MD5[name]} of the original upstream file"
    if digests["sha256"] == REFERENCE_SHA256[name]:
        return f"sha256 {REFERENCE_SHA256[name]} of the reference rebuild"
    return None


def download_omniglot(out_dir: Path, mirror: str | None = None) -> list[Path]:
    """Fetch ``images_background.zip`` and ``images_evaluation.zip`` into ``out_dir``, verified.

    **Source.** ``mirror`` if it is a non-empty string; otherwise the environment variable
    ``METACOLLAPSE_OMNIGLOT_MIRROR`` (:data:`MIRROR_ENV`) if it is set and non-empty; otherwise the official
    upstream. A mirror is a local folder, a ``file://`` URL or an ``http(s)://`` URL prefix holding the two zips
    and a ``SHA256SUMS`` file (``sha256sum`` format) giving their expected sha256 (:func:`make_mirror` makes
    one). The official upstream is ``UPSTREAM_URL``, checked against the md5s that torchvision pins
    (``UPSTREAM_MD5``). For testing and for private copies of the upstream files, the environment variable
    ``METACOLLAPSE_OMNIGLOT_UPSTREAM`` (:data:`UPSTREAM_ENV`) replaces that upstream with another base (folder,
    ``file://`` or ``http(s)://``), which must also serve an ``MD5SUMS`` file (``md5sum`` format) for the zips.

    **Zips already in out_dir.** Verified data does not depend on where it came from. A zip already present is
    kept, and not downloaded again, if it matches the md5 of the original upstream file (``UPSTREAM_MD5``), the
    sha256 of the reference rebuild (``REFERENCE_SHA256``: the same images, stored uncompressed), or the
    checksum the configured source gives for it. The first two are checked without contacting the source, so a
    finished ``out_dir`` needs no source at all. A present zip that matches none of them is replaced, but only
    once its new copy has downloaded and verified; a failed download leaves it as it was.

    Returns the two zip paths in ``ZIP_NAMES`` order. Raises :class:`DataError` on an unreachable source, a
    missing checksum entry, a truncated download or a checksum mismatch; no partial file is ever left in
    ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / name for name in ZIP_NAMES]
    pending: dict[str, _Digests | None] = {}  # zip name -> digests of the present file, None if absent
    for target in targets:
        digests = _Digests(target) if target.is_file() else None
        reference = _known_good(digests, target.name) if digests is not None else None
        if reference is not None:
            log.info("%s already present and verified (%s)", target, reference)
        else:
            pending[target.name] = digests
    if not pending:
        return targets

    source = _configured_source(mirror)
    for name, digests in pending.items():
        target = out_dir / name
        expected = source.expected[name]
        if digests is not None:
            actual = digests[source.algorithm]
            if actual == expected:
                log.info(
                    "%s already present and verified (%s %s from %s)",
                    target,
                    source.algorithm,
                    actual,
                    source.description,
                )
                continue
            log.warning(
                "%s exists but matches no known checksum (%s %s, expected %s from %s): downloading it again",
                target,
                source.algorithm,
                actual,
                expected,
                source.description,
            )
        t0 = time.perf_counter()
        _download_verified(source.base + name, target, source.algorithm, expected)
        log.info(
            "downloaded %s from %s in %.1f s (%s verified)",
            target,
            source.base + name,
            time.perf_counter() - t0,
            source.algorithm,
        )
    return targets


def make_mirror(zips_dir: Path, mirror_dir: Path) -> Path:
    """Make ``mirror_dir`` a mirror for :func:`download_omniglot` from the two zips in ``zips_dir``.

    Each zip must be a readable Omniglot zip (``top/Alphabet/characterNN/*.png`` entries). The zips are copied
    into ``mirror_dir`` (unless it is ``zips_dir`` itself) and ``mirror_dir/SHA256SUMS`` is written in
    ``sha256sum`` format (``<hex>  <name>`` per line), all atomically. The checksums record the files as
    they are: they are not compared with ``UPSTREAM_MD5`` or ``REFERENCE_SHA256``, so a mirror can also hold
    a private copy. The same as copying the zips and running ``sha256sum images_*.zip > SHA256SUMS`` there.
    Returns the path of ``SHA256SUMS``.
    """
    zips_dir, mirror_dir = Path(zips_dir), Path(mirror_dir)
    for name in ZIP_NAMES:
        zip_path = zips_dir / name
        with _open_zip(zip_path) as zf:
            try:
                _index_zip(zip_path, zf)
            except _ZIP_ERRORS as exc:
                raise DataError(f"{zip_path}: cannot list entries: {type(exc).__name__}: {exc}") from exc
    mirror_dir.mkdir(parents=True, exist_ok=True)
    same_dir = mirror_dir.resolve() == zips_dir.resolve()
    lines = []
    for name in ZIP_NAMES:
        target = mirror_dir / name
        if not same_dir:
            with atomic_path(target) as tmp:
                shutil.copyfile(zips_dir / name, tmp)
        lines.append(f"{hash_file(target, 'sha256')}  {name}\n")
    sums_path = mirror_dir / CHECKSUM_FILE
    atomic_write_text(sums_path, "".join(lines))
    log.info("wrote %s for %s", sums_path, ", ".join(ZIP_NAMES))
    return sums_path


# ----------------------------------------------------------------------------------------------------
# Split lists
# ----------------------------------------------------------------------------------------------------


def _read_split_list(splits_dir: Path, split: str, sums: dict[str, str], sums_path: Path) -> list[str]:
    path = splits_dir / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"split list {path} not found (split {split!r})")
    if path.name not in sums:
        raise DataError(
            f"split list {path}: no entry for {path.name} in {sums_path}; expected sha256 "
            f"unknown, actual {hash_file(path)}"
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sums[path.name]:
        raise DataError(
            f"checksum mismatch for split list {path}: expected sha256 {sums[path.name]} "
            f"(from {sums_path}), actual {actual}"
        )
    names: list[str] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        name = raw.strip()
        if not name:
            continue
        if not _CLASS_RE.match(name):
            raise DataError(
                f"split list {path}, line {lineno}: {raw!r} is not 'Alphabet/characterNN/rotDDD' "
                f"with DDD in 000, 090, 180, 270"
            )
        if name in seen:
            raise DataError(f"split list {path}, line {lineno}: class {name!r} is listed twice")
        seen.add(name)
        names.append(name)
    if not names:
        raise DataError(f"split list {path} is empty")
    return names


# ----------------------------------------------------------------------------------------------------
# Zips and rendering
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Character:
    zip_path: Path
    entries: tuple[str, ...]  # PNG entry names, sorted by file name


def _index_zip(zip_path: Path, zf: zipfile.ZipFile) -> dict[str, list[str]]:
    """Map ``Alphabet/characterNN`` to its PNG entries (zip layout ``top/Alphabet/characterNN/x.png``)."""
    index: dict[str, list[str]] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        parts = info.filename.split("/")
        # Only the standard depth; skips e.g. __MACOSX/ resource forks and dot-files.
        if len(parts) != 4 or parts[0].startswith("__") or parts[-1].startswith("."):
            continue
        if not parts[-1].lower().endswith(".png"):
            continue
        index.setdefault(f"{parts[1]}/{parts[2]}", []).append(info.filename)
    if not index:
        raise DataError(f"{zip_path}: no 'top/Alphabet/characterNN/*.png' entries found; not an Omniglot zip")
    return index


def _decode_character(zip_path: Path, zf: zipfile.ZipFile, character: str, entries: Sequence[str]) -> np.ndarray:
    """Render the 20 drawings of one character in its 4 rotations: uint8 ``[4, 20, 28, 28]``, strokes = 1."""
    out = np.empty((len(_ROTATIONS), len(entries), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, entry in enumerate(entries):
        try:
            data = zf.read(entry)
        except _ZIP_ERRORS as exc:
            raise DataError(
                f"{zip_path}: cannot read entry {entry!r} (character {character}): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.size != (RAW_IMAGE_SIZE, RAW_IMAGE_SIZE):
                    raise DataError(
                        f"{zip_path}: entry {entry!r} (character {character}) is "
                        f"{im.size[0]}x{im.size[1]}, expected {RAW_IMAGE_SIZE}x{RAW_IMAGE_SIZE}"
                    )
                if im.mode != "1":
                    raise DataError(
                        f"{zip_path}: entry {entry!r} (character {character}) has PIL mode "
                        f"{im.mode!r}, expected 1-bit mode '1'"
                    )
                for r, transpose in enumerate(_ROTATIONS.values()):
                    rotated = im if transpose is None else im.transpose(transpose)
                    small = rotated.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
                    # Mode "1" arrays are bool with True = white background; invert so strokes are 1.
                    out[r, i] = ~np.asarray(small, dtype=bool)
        except _IMAGE_ERRORS as exc:
            raise DataError(
                f"{zip_path}: cannot decode entry {entry!r} (character {character}) as an image: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return out


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.is_file():
        raise DataError(f"raw zip {zip_path} not found (run the download step first)")
    try:
        return zipfile.ZipFile(zip_path)
    except _ZIP_ERRORS as exc:
        raise DataError(
            f"{zip_path} is not a readable zip (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc


def prepare_splits(
    raw_dir: Path,
    splits_dir: Path,
    out_dir: Path,
    splits: Sequence[str] = SPLITS,
) -> dict[str, Path]:
    """Render the Vinyals splits to ``out_dir/{split}.npy`` and ``out_dir/{split}_classes.txt``.

    Each split list in ``splits_dir`` is first verified against ``splits_dir/SHA256SUMS``. The array for a
    split is uint8 ``[classes, 20, 28, 28]`` (strokes 1, background 0) with classes in split-list order and
    the 20 drawings of a class ordered by file name. Each PNG is decoded once and its four rotations derived from
    it. Every problem is detected before the first output is written, and outputs are written atomically.
    Returns ``{split: path of split.npy}``.
    """
    raw_dir, splits_dir, out_dir = Path(raw_dir), Path(splits_dir), Path(out_dir)
    splits = list(splits)
    if not splits:
        raise DataError("prepare_splits: no splits requested")
    if len(set(splits)) != len(splits):
        raise DataError(f"prepare_splits: duplicate split names in {splits}")
    t0 = time.perf_counter()

    sums_path = splits_dir / CHECKSUM_FILE
    if not sums_path.is_file():
        raise DataError(f"checksum file {sums_path} not found; the split lists cannot be verified")
    sums = parse_checksum_file(sums_path.read_text(encoding="utf-8"), str(sums_path))
    class_lists = {split: _read_split_list(splits_dir, split, sums, sums_path) for split in splits}

    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        characters: dict[str, _Character] = {}
        for name in ZIP_NAMES:
            zip_path = raw_dir / name
            zf = zips[zip_path] = _open_zip(zip_path)
            try:
                index = _index_zip(zip_path, zf)
            except _ZIP_ERRORS as exc:
                raise DataError(f"{zip_path}: cannot list entries: {type(exc).__name__}: {exc}") from exc
            for character, entries in index.items():
                if character in characters:
                    raise DataError(
                        f"character {character} appears in both {characters[character].zip_path} and {zip_path}"
                    )
                characters[character] = _Character(zip_path, tuple(sorted(entries, key=_file_name)))

        # Check every class before decoding anything, so layout errors surface immediately.
        needed: dict[str, None] = {}  # ordered set of the characters to render
        zip_list = " or ".join(str(p) for p in zips)
        for split, names in class_lists.items():
            for name in names:
                character = name.rsplit("/", 1)[0]
                if character not in characters:
                    raise DataError(
                        f"missing character: class {name!r} of split list "
                        f"{splits_dir / f'{split}.txt'} has no folder {character}/ in {zip_list}"
                    )
                found = characters[character]
                if len(found.entries) != IMAGES_PER_CLASS:
                    raise DataError(
                        f"{found.zip_path}: character {character} has {len(found.entries)} "
                        f"images, expected {IMAGES_PER_CLASS} (class {name!r}, split {split})"
                    )
                needed[character] = None

        rendered: dict[str, np.ndarray] = {}
        for character in needed:
            found = characters[character]
            rendered[character] = _decode_character(found.zip_path, zips[found.zip_path], character, found.entries)
    finally:
        for zf in zips.values():
            zf.close()
    t_render = time.perf_counter() - t0

    rot_index = {rot: r for r, rot in enumerate(_ROTATIONS)}
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    for split, names in class_lists.items():
        array = np.empty((len(names), IMAGES_PER_CLASS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for c, name in enumerate(names):
            character, rot = name.rsplit("/", 1)
            array[c] = rendered[character][rot_index[rot.removeprefix("rot")]]
        npy_path = out_dir / f"{split}.npy"
        with atomic_path(npy_path) as tmp:
            np.save(tmp, array, allow_pickle=False)
        atomic_write_text(out_dir / f"{split}_classes.txt", "".join(f"{n}\n" for n in names))
        outputs[split] = npy_path
        log.info("wrote %s: %s classes", npy_path, len(names))
    log.info(
        "prepared %s from %d characters in %.1f s (decode %.1f s)",
        ", ".join(splits),
        len(rendered),
        time.perf_counter() - t0,
        t_render,
    )
    return outputs


def _file_name(entry: str) -> str:
    return entry.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


REMAKE_HINT = "remake the processed splits with `snakemake --cores all --forcerun prepare`"


def load_split(processed_dir: Path, split: str, *, mmap: bool = False) -> tuple[np.ndarray, list[str]]:
    """Load ``{split}.npy`` and its class names (see :func:`_load_split`); a damaged file's error says how to
    remake it, since Snakemake sees an existing file as finished and would not redo ``prepare`` by itself."""
    try:
        return _load_split(processed_dir, split, mmap=mmap)
    except DataError as error:
        raise DataError(f"{error}; {REMAKE_HINT}") from error


def _load_split(processed_dir: Path, split: str, *, mmap: bool = False) -> tuple[np.ndarray, list[str]]:
    """Load ``{split}.npy`` and its class names, checking shape, dtype, values and the class list.

    Returns ``(array, class_names)`` with ``array`` uint8 ``[classes, 20, 28, 28]`` in {0, 1}. With
    ``mmap=True`` the array is memory-mapped read-only instead of read into memory.
    Raises :class:`DataError` naming the offending file.
    """
    processed_dir = Path(processed_dir)
    npy_path = processed_dir / f"{split}.npy"
    classes_path = processed_dir / f"{split}_classes.txt"
    if not npy_path.is_file():
        raise DataError(f"processed split file {npy_path} not found (run the prepare step first)")
    try:
        array = np.load(npy_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{npy_path} is not a readable .npy file: {type(exc).__name__}: {exc}") from exc
    expected_tail = (IMAGES_PER_CLASS, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[1:] != expected_tail:
        shape = getattr(array, "shape", None)
        raise DataError(
            f"{npy_path} has shape {shape}, expected (classes, {IMAGES_PER_CLASS}, {IMAGE_SIZE}, {IMAGE_SIZE})"
        )
    if array.dtype != np.uint8:
        raise DataError(f"{npy_path} has dtype {array.dtype}, expected uint8")
    if array.size and int(array.max()) > 1:
        raise DataError(f"{npy_path} has values above 1; expected strokes = 1 and background = 0")
    if not classes_path.is_file():
        raise DataError(f"class list {classes_path} not found (it belongs with {npy_path})")
    names = classes_path.read_text(encoding="utf-8").splitlines()
    if len(names) != array.shape[0]:
        raise DataError(f"{classes_path} has {len(names)} lines but {npy_path} has {array.shape[0]} classes")
    for lineno, name in enumerate(names, start=1):
        if not _CLASS_RE.match(name):
            raise DataError(f"{classes_path}, line {lineno}: {name!r} is not 'Alphabet/characterNN/rotDDD'")
    if len(set(names)) != len(names):
        raise DataError(f"{classes_path} lists some class more than once")
    return array, names


def data_info(processed_dir: Path) -> dict:
    """Summarise and validate every ``{split}.npy`` in ``processed_dir``.

    Returns ``{split: {"classes": C, "images_per_class": 20, "image_shape": [28, 28], "dtype": "uint8",
    "class_names_match": True}}`` with the standard splits first, in ``SPLITS`` order. Every split is checked
    with :func:`load_split` (memory-mapped), so a split whose ``_classes.txt`` line count differs from the
    array's first dimension, or with a bad shape/dtype, raises :class:`DataError` rather than being reported.
    Raises :class:`DataError` if the directory has no ``.npy`` files.
    """
    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise DataError(f"processed data directory {processed_dir} not found")
    # Hidden files are atomic-write temporaries, never splits.
    found = [p.stem for p in processed_dir.glob("*.npy") if not p.name.startswith(".")]
    if not found:
        raise DataError(f"no {{split}}.npy files in {processed_dir}")
    order = sorted(found, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    info: dict[str, dict] = {}
    for split in order:
        array, _names = load_split(processed_dir, split, mmap=True)
        info[split] = {
            "classes": int(array.shape[0]),
            "images_per_class": int(array.shape[1]),
            "image_shape": [int(array.shape[2]), int(array.shape[3])],
            "dtype": str(array.dtype),
            "class_names_match": True,  # load_split raised otherwise
        }
        del array  # release the memory map before the next split
    return info
