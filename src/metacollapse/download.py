"""Fetching the raw files of a dataset, verified: sources, checksums, streaming downloads and mirrors.

The source is a mirror (argument, else the dataset's environment variable) or the official upstream. Every file
is streamed into a hidden temporary file, hashed on the way and moved into place only once it verified; a file
already present that verifies is kept without contacting any source. Sources, pins and rules: docs/data.md.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from metacollapse.atomic import atomic_path, atomic_write_text, hash_file
from metacollapse.data import (
    CHECKSUM_FILE,
    FASHION_RAW,
    OMNIGLOT_RAW,
    DataError,
    RawFiles,
    check_omniglot_zip,
    parse_checksum_file,
)

log = logging.getLogger(__name__)

DATASETS: dict[str, RawFiles] = {raw.dataset: raw for raw in (OMNIGLOT_RAW, FASHION_RAW)}
MIRROR_ENV = OMNIGLOT_RAW.mirror_env
FASHION_MIRROR_ENV = FASHION_RAW.mirror_env
# Replaces the official Omniglot upstream (URL and md5s) for testing and for private copies of the upstream files.
UPSTREAM_ENV = "METACOLLAPSE_OMNIGLOT_UPSTREAM"
MD5_FILE = "MD5SUMS"

UPSTREAM_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# The upstream publishes no checksums; these are the md5s of the 2015 zips that torchvision.datasets.Omniglot pins.
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

# The download links and md5s of the four .gz files in the Fashion-MNIST README (zalandoresearch/fashion-mnist).
FASHION_UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_UPSTREAM_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# sha256 of each file's decompressed idx content, which identifies the data whatever the compression: computed
# from Debian's dataset-fashion-mnist (recompressed .gz files), whose content has the published idx headers and
# sizes (60,000 and 10,000 images of 28x28, labels 0-9, 6,000 and 1,000 per label); other projects pin the same
# digests from the upstream files. docs/data.md has the details.
FASHION_CONTENT_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_DIGEST_LENGTH = {"md5": 32, "sha256": 64}
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _raw_files(dataset: str) -> RawFiles:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def _content_pins(raw: RawFiles) -> dict[str, str] | None:
    """The decompressed-content sha256 every file of the dataset must have, if its content is pinned."""
    return FASHION_CONTENT_SHA256 if raw is FASHION_RAW else None


def _make_mirror_command(raw: RawFiles) -> str:
    option = "" if raw is OMNIGLOT_RAW else f" --dataset {raw.dataset}"
    return f"`metacollapse make-mirror{option} FILES_DIR MIRROR_DIR`"


def _fix_hint(raw: RawFiles, upstream: bool) -> str:
    """How to point the download at a source that works, when the upstream or the mirror failed."""
    if upstream:
        hint = (
            f"to use a copy instead (without network, say), set `{raw.config_key}` in the config (or "
            f"${raw.mirror_env}) to a mirror: a folder or URL prefix holding {', '.join(raw.names)} and a "
            f"SHA256SUMS; {_make_mirror_command(raw)} makes one from copies of the files"
        )
        if raw is FASHION_RAW:
            hint += f" (Debian's package dataset-fashion-mnist installs {DEBIAN_FASHION_DIR}, a mirror as it is)"
        return hint
    return (
        f"the mirror comes from --mirror, else ${raw.mirror_env}, which the workflow sets from `{raw.config_key}`; "
        f"fix or unset it ({_make_mirror_command(raw)} makes one)"
    )


@dataclass(frozen=True)
class _Source:
    base: str  # URL prefix ending in '/'
    algorithm: str  # of ``expected``: "md5" or "sha256"
    expected: dict[str, str] | None  # file name -> hex digest of its bytes; None: the source gives none
    description: str  # for messages
    upstream: bool


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


def _absent(exc: BaseException) -> bool:
    """Whether a failed request means the file does not exist (rather than an unreachable source)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 404
    return isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, FileNotFoundError)


def _fetch_checksums(
    raw: RawFiles, base: str, file_name: str, algorithm: str, description: str, *, upstream: bool, optional: bool
) -> dict[str, str] | None:
    """The ``algorithm`` digest of every file from the checksum file ``base + file_name``; None if ``optional``
    and that file does not exist."""
    url = base + file_name
    try:
        with _open_url(url) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, http.client.HTTPException, UnicodeDecodeError, ValueError) as exc:
        if optional and _absent(exc):
            log.info("%s has no %s: each file is checked against its pinned content only", description, file_name)
            return None
        raise DataError(
            f"cannot read {file_name} from {description} ({url}): {_reason(exc)}; it is needed for "
            f"the expected {algorithm} of {', '.join(raw.names)} (nothing was downloaded); {_fix_hint(raw, upstream)}"
        ) from exc
    sums = parse_checksum_file(text, url)
    # Check every entry before downloading anything.
    for name in raw.names:
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
    return {name: sums[name] for name in raw.names}


def _configured_source(raw: RawFiles, mirror: str | None) -> _Source:
    """``mirror``, else the dataset's mirror variable, else (Omniglot) ``UPSTREAM_ENV``, else the upstream.

    A mirror's ``SHA256SUMS`` is read here; it may be absent only where the files' content is pinned.
    """
    mirror = str(mirror).strip() if mirror else os.environ.get(raw.mirror_env, "").strip()
    if mirror:
        base = _base_url(mirror, "mirror")
        description = f"mirror {mirror!r}"
        optional = _content_pins(raw) is not None
        if optional and base.startswith("file:"):
            folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(base).path))
            if not folder.is_dir():
                raise DataError(f"mirror folder {folder} not found (nothing was downloaded); {_fix_hint(raw, False)}")
        sums = _fetch_checksums(raw, base, CHECKSUM_FILE, "sha256", description, upstream=False, optional=optional)
        return _Source(base, "sha256", sums, description, upstream=False)
    override = os.environ.get(UPSTREAM_ENV, "").strip() if raw is OMNIGLOT_RAW else ""
    if override:
        base = _base_url(override, "upstream")
        description = f"upstream {base} (set by {UPSTREAM_ENV})"
        sums = _fetch_checksums(raw, base, MD5_FILE, "md5", description, upstream=True, optional=False)
        return _Source(base, "md5", sums, description, upstream=True)
    if raw is FASHION_RAW:
        url, md5s, note = FASHION_UPSTREAM_URL, FASHION_UPSTREAM_MD5, "md5 published in its README"
    else:
        url, md5s, note = UPSTREAM_URL, UPSTREAM_MD5, "md5 pinned by torchvision"
    return _Source(url, "md5", dict(md5s), f"upstream {url} ({note})", upstream=True)


def content_sha256(path: Path) -> str:
    """sha256 of a gzip file's decompressed bytes; a :class:`DataError` naming the file if it is no gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except _GZIP_ERRORS as exc:
        raise DataError(
            f"{path} is not a readable gzip file (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    return digest.hexdigest()


def _download_verified(url: str, target: Path, source: _Source, content: str | None, hint: str) -> None:
    """Stream ``url`` into a temp file next to ``target`` while hashing; verify its bytes against the source's
    checksum (if it gives one) and its decompressed content against ``content`` (if pinned); then move it in."""
    what = f"{target.name} from {url}"
    algorithm = source.algorithm
    expected = source.expected[target.name] if source.expected else None
    wanted = f"{algorithm} {expected}" if expected else f"decompressed sha256 {content}"
    try:
        resp = _open_url(url)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(
            f"cannot download {what}: {_reason(exc)}; expected {wanted}, actual: none "
            f"(nothing received; {target} left as it was); {hint}"
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
                        f"expected {wanted}, actual {algorithm} {actual} (partial file removed)"
                    )
                if expected is not None and actual != expected:
                    raise DataError(
                        f"checksum mismatch for {what}: expected {algorithm} {expected}, actual {actual} "
                        f"({received} bytes; downloaded file removed)"
                    )
                if content is not None:
                    try:
                        unpacked = content_sha256(tmp)
                    except DataError as exc:
                        raise DataError(
                            f"{what} is not a readable gzip file: expected decompressed sha256 {content} "
                            f"({received} bytes; downloaded file removed; {exc.__cause__ or exc})"
                        ) from exc
                    if unpacked != content:
                        raise DataError(
                            f"checksum mismatch for {what}: expected decompressed sha256 {content}, actual "
                            f"{unpacked} ({received} bytes; downloaded file removed)"
                        )
        except (OSError, http.client.HTTPException) as exc:
            # IncompleteRead, connection reset, timeout mid-stream, disk full...
            raise DataError(
                f"download of {what} failed after {received} bytes: {_reason(exc)}; expected {wanted}, "
                f"actual: incomplete (partial file removed)"
            ) from exc


class _Digests:
    """Lazily computed digests of one file, each at most once; ``"content"`` is the decompressed sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[str, str | None] = {}

    def __getitem__(self, algorithm: str) -> str | None:
        if algorithm not in self._done:
            if algorithm != "content":
                self._done[algorithm] = hash_file(self.path, algorithm)
            else:
                try:
                    self._done[algorithm] = content_sha256(self.path)
                except DataError:
                    self._done[algorithm] = None  # not a gzip: matches no pin
        return self._done[algorithm]


def _known_good(raw: RawFiles, digests: _Digests) -> str | None:
    """Which source-independent reference the file matches: its content pin, the 2015 original or the rebuild."""
    name = digests.path.name
    pins = _content_pins(raw)
    if pins is not None:
        return f"decompressed sha256 {pins[name]}" if digests["content"] == pins[name] else None
    if digests["md5"] == UPSTREAM_MD5[name]:
        return f"md5 {UPSTREAM_MD5[name]} of the original upstream file"
    if digests["sha256"] == REFERENCE_SHA256[name]:
        return f"sha256 {REFERENCE_SHA256[name]} of the reference rebuild"
    return None


def _vouched(raw: RawFiles, digests: _Digests, source: _Source) -> bool:
    """Whether the source's own checksum accepts a present file. Never enough where the content is pinned."""
    if _content_pins(raw) is not None or source.expected is None:
        return False
    return digests[source.algorithm] == source.expected[digests.path.name]


def _download(raw: RawFiles, out_dir: Path, mirror: str | None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / name for name in raw.names]
    pending: dict[str, _Digests | None] = {}  # file name -> digests of the present file, None if absent
    for target in targets:
        digests = _Digests(target) if target.is_file() else None
        reference = _known_good(raw, digests) if digests is not None else None
        if reference is not None:
            log.info("%s already present and verified (%s)", target, reference)
        else:
            pending[target.name] = digests
    if not pending:
        return targets

    source = _configured_source(raw, mirror)
    pins = _content_pins(raw)
    for name, digests in pending.items():
        target = out_dir / name
        if digests is not None:
            if _vouched(raw, digests, source):
                log.info("%s already present and verified (%s from %s)", target, source.algorithm, source.description)
                continue
            log.warning("%s exists but matches no known checksum: downloading it again from %s", target, source.base)
        t0 = time.perf_counter()
        content = pins[name] if pins is not None else None
        _download_verified(source.base + name, target, source, content, _fix_hint(raw, source.upstream))
        checks = [f"{source.algorithm} verified"] if source.expected else []
        checks += ["decompressed sha256 verified"] if content else []
        log.info(
            "downloaded %s from %s in %.1f s (%s)",
            target,
            source.base + name,
            time.perf_counter() - t0,
            ", ".join(checks),
        )
    return targets


def download_omniglot(out_dir: Path, mirror: str | None = None) -> list[Path]:
    """Fetch ``images_background.zip`` and ``images_evaluation.zip`` into ``out_dir``, verified.

    A zip already present is kept if it matches ``UPSTREAM_MD5``, ``REFERENCE_SHA256`` or the configured source's
    checksum; the first two are checked without contacting any source. A zip that matches none is replaced once
    its new copy verified. Returns the paths in ``ZIP_NAMES`` order.
    """
    return _download(OMNIGLOT_RAW, out_dir, mirror)


def download_fashion(out_dir: Path, mirror: str | None = None) -> list[Path]:
    """Fetch the four Fashion-MNIST ``*-idx?-ubyte.gz`` files into ``out_dir``, verified.

    Every file's decompressed content must match ``FASHION_CONTENT_SHA256`` whatever its compressed bytes; a
    download must in addition match its source's checksum (the published md5, or the mirror's ``SHA256SUMS``
    when it has one). A present file whose content matches is kept without contacting any source.
    """
    return _download(FASHION_RAW, out_dir, mirror)


def unverified_files(out_dir: Path, mirror: str | None = None, dataset: str = "omniglot") -> list[Path]:
    """The dataset's files present in ``out_dir`` that match neither a known-good checksum nor the configured
    source's checksum (see :func:`download_omniglot`); a source that cannot be read leaves only the known-good
    checksums. Where the content is pinned (Fashion-MNIST), a file is good only if its content matches."""
    raw = _raw_files(dataset)
    out_dir = Path(out_dir)
    unverified: list[Path] = []
    source: _Source | None = None
    asked = False
    for path in (out_dir / name for name in raw.names):
        if not path.is_file():
            continue
        digests = _Digests(path)
        if _known_good(raw, digests) is not None:
            continue
        if not asked and _content_pins(raw) is None:
            asked = True
            try:
                source = _configured_source(raw, mirror)
            except DataError as exc:
                log.warning("only the known-good checksums count: %s", exc)
        if source is None or not _vouched(raw, digests, source):
            unverified.append(path)
    return unverified


def make_mirror(files_dir: Path, mirror_dir: Path, dataset: str = "omniglot") -> Path:
    """Make ``mirror_dir`` a mirror of ``dataset`` from its files in ``files_dir``.

    Each file must be usable: a readable Omniglot zip, or a Fashion-MNIST ``.gz`` whose decompressed content
    matches its pin. The files are copied into ``mirror_dir`` (unless it is ``files_dir``) and
    ``mirror_dir/SHA256SUMS`` records them as they are (``sha256sum`` format), all atomically: an Omniglot
    mirror may hold a private copy of the zips. Returns the path of ``SHA256SUMS``.
    """
    raw = _raw_files(dataset)
    files_dir, mirror_dir = Path(files_dir), Path(mirror_dir)
    pins = _content_pins(raw)
    for name in raw.names:
        path = files_dir / name
        if pins is None:
            check_omniglot_zip(path)
            continue
        if not path.is_file():
            raise DataError(f"{path} not found: a {raw.dataset} mirror holds {', '.join(raw.names)}")
        actual = content_sha256(path)
        if actual != pins[name]:
            raise DataError(f"{path}: decompressed content has sha256 {actual}, expected {pins[name]}")
    mirror_dir.mkdir(parents=True, exist_ok=True)
    same_dir = mirror_dir.resolve() == files_dir.resolve()
    lines = []
    for name in raw.names:
        target = mirror_dir / name
        if not same_dir:
            with atomic_path(target) as tmp:
                shutil.copyfile(files_dir / name, tmp)
        lines.append(f"{hash_file(target, 'sha256')}  {name}\n")
    sums_path = mirror_dir / CHECKSUM_FILE
    atomic_write_text(sums_path, "".join(lines))
    log.info("wrote %s for %s", sums_path, ", ".join(raw.names))
    return sums_path
