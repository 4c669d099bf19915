"""Datasets on disk: split lists, rendering the raw files to split arrays, and loading those arrays.

Omniglot: the Vinyals split lists are verified and rendered from the two raw zips to uint8
``[classes, 20, 28, 28]`` arrays, strokes 1 (:func:`prepare_splits`). Fashion-MNIST: the four idx files become
``fashion_train`` and ``fashion_test``, uint8 ``[10, per_class, 28, 28]`` grey levels (:func:`prepare_fashion`).
:func:`load_split` and :func:`data_info` read them back, checked. Fetching the raw files is
:mod:`metacollapse.download`; layouts, sources and how they were checked are in docs/data.md. Every output is
written atomically and byte-deterministically; every problem is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import re
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from metacollapse.atomic import atomic_path, atomic_write_text, hash_file

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")
FASHION_SPLITS: tuple[str, ...] = ("fashion_train", "fashion_test")
IMAGES_PER_CLASS = 20  # Omniglot
RAW_IMAGE_SIZE = 105
IMAGE_SIZE = 28
CHECKSUM_FILE = "SHA256SUMS"
ZIP_NAMES: tuple[str, str] = ("images_background.zip", "images_evaluation.zip")
# Fashion-MNIST: {split: (images file, labels file)}, and the class names in label order (Xiao et al. 2017).
FASHION_PARTS: dict[str, tuple[str, str]] = {
    "fashion_train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "fashion_test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_FILES: tuple[str, ...] = tuple(name for pair in FASHION_PARTS.values() for name in pair)
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_IMAGES = {"fashion_train": 60_000, "fashion_test": 10_000}


@dataclass(frozen=True)
class RawFiles:
    """The raw files of one dataset, and the settings that say where the download takes them from."""

    dataset: str
    names: tuple[str, ...]
    config_key: str  # the workflow config key of the mirror
    mirror_env: str  # the environment variable the workflow sets from it
    rule: str  # the workflow rule that downloads them

    def refetch_hint(self) -> str:
        return (
            f"fetch it again with `snakemake --cores all --forcerun {self.rule}` from a good source (the config's "
            f"`{self.config_key}`, else ${self.mirror_env}, else the official upstream)"
        )


OMNIGLOT_RAW = RawFiles("omniglot", ZIP_NAMES, "omniglot_mirror", "METACOLLAPSE_OMNIGLOT_MIRROR", "download")
FASHION_RAW = RawFiles("fashion", FASHION_FILES, "fashion_mirror", "METACOLLAPSE_FASHION_MIRROR", "download_fashion")
_REFETCH = OMNIGLOT_RAW.refetch_hint()
_FASHION_REFETCH = FASHION_RAW.refetch_hint()
REMAKE_HINT = "remake the processed splits with `snakemake --cores all --forcerun prepare`"

_ROTATIONS: dict[str, Image.Transpose | None] = {
    "000": None,
    "090": Image.Transpose.ROTATE_90,  # counter-clockwise, same as Image.rotate(90)
    "180": Image.Transpose.ROTATE_180,
    "270": Image.Transpose.ROTATE_270,
}
_CLASS_RE = re.compile(r"^(?P<alphabet>[^/\s][^/]*)/(?P<character>character\d+)/rot(?P<rot>000|090|180|270)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
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


def is_fashion(split: str) -> bool:
    """Fashion-MNIST splits are named ``fashion_*``; every other split is Omniglot-like."""
    return split.startswith("fashion_")


def pixel_scale(split: str) -> float:
    """What a split's stored uint8 values are multiplied by for the network: Omniglot's {0, 1} as they are,
    Fashion-MNIST's grey levels 0..255 to [0, 1]."""
    return 1 / 255 if is_fashion(split) else 1.0


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


def _file_name(entry: str) -> str:
    return entry.rsplit("/", 1)[-1]


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
    """Render the 20 drawings of one character in its 4 rotations: uint8 ``[4, 20, 28, 28]``, strokes = 1.

    As the original ProtoNet loader does (rotate, nearest resize to 28x28, invert), but upright: without its
    height/width transpose (docs/data.md, "One deliberate difference").
    """
    out = np.empty((len(_ROTATIONS), len(entries), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, entry in enumerate(entries):
        try:
            data = zf.read(entry)
        except _ZIP_ERRORS as exc:
            raise DataError(
                f"{zip_path}: cannot read entry {entry!r} (character {character}): {type(exc).__name__}: {exc}; "
                f"{_REFETCH}"
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


def _open_zip(zip_path: Path, hint: str) -> zipfile.ZipFile:
    if not zip_path.is_file():
        raise DataError(f"raw zip {zip_path} not found (run the download step first)")
    try:
        return zipfile.ZipFile(zip_path)
    except _ZIP_ERRORS as exc:
        raise DataError(
            f"{zip_path} is not a readable zip (truncated or corrupt?): {type(exc).__name__}: {exc}{hint}"
        ) from exc


def _characters(zip_path: Path, zf: zipfile.ZipFile, hint: str) -> dict[str, list[str]]:
    try:
        return _index_zip(zip_path, zf)
    except _ZIP_ERRORS as exc:
        raise DataError(f"{zip_path}: cannot list entries: {type(exc).__name__}: {exc}{hint}") from exc


def check_omniglot_zip(zip_path: Path) -> None:
    """Raise :class:`DataError` unless ``zip_path`` is a readable zip of ``top/Alphabet/characterNN/*.png``."""
    with _open_zip(zip_path, "") as zf:
        _characters(zip_path, zf, "")


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
            zf = zips[zip_path] = _open_zip(zip_path, f"; {_REFETCH}")
            for character, entries in _characters(zip_path, zf, f"; {_REFETCH}").items():
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
        outputs[split] = _write_split(out_dir, split, array, names)
    log.info(
        "prepared %s from %d characters in %.1f s (decode %.1f s)",
        ", ".join(splits),
        len(rendered),
        time.perf_counter() - t0,
        t_render,
    )
    return outputs


def read_idx(path: Path, shape: tuple[int, ...], hint: str = "") -> np.ndarray:
    """The uint8 array of a gzipped idx file (LeCun's MNIST format) whose shape must be ``shape``.

    The header is ``0x00 0x00 0x08 ndim`` (0x08: unsigned bytes) and then each dimension as a big-endian uint32;
    the data follows in C order. ``hint`` is appended to the errors of an unreadable file.
    """
    if not path.is_file():
        raise DataError(f"raw file {path} not found (run the download step first)")
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a readable gzip file (truncated or corrupt?): {type(exc).__name__}: {exc}{hint}"
        ) from exc
    header = 4 + 4 * len(shape)
    magic = bytes([0, 0, 8, len(shape)])
    if data[:4] != magic:
        raise DataError(f"{path}: idx header {data[:4].hex()}, expected {magic.hex()} (uint8, {len(shape)} dimensions)")
    found = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
    if found != shape:
        raise DataError(f"{path}: idx dimensions {found}, expected {shape}")
    if len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"{path}: {len(data) - header} data bytes after the idx header, expected {int(np.prod(shape))}{hint}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def prepare_fashion(raw_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``fashion_train`` and ``fashion_test`` to ``out_dir/{split}.npy`` and ``{split}_classes.txt``.

    The array is uint8 ``[10, per_class, 28, 28]``, grey levels 0..255 as stored (0 background), class ``c`` the
    images of label ``c`` in file order; the class list holds :data:`FASHION_CLASSES`. Both splits are checked
    before anything is written. Returns ``{split: path of split.npy}``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    arrays: dict[str, np.ndarray] = {}
    for split, (images_name, labels_name) in FASHION_PARTS.items():
        count = FASHION_IMAGES[split]
        images = read_idx(raw_dir / images_name, (count, IMAGE_SIZE, IMAGE_SIZE), f"; {_FASHION_REFETCH}")
        labels = read_idx(raw_dir / labels_name, (count,), f"; {_FASHION_REFETCH}")
        per_class = np.bincount(labels, minlength=len(FASHION_CLASSES))
        if len(per_class) != len(FASHION_CLASSES) or (per_class != count // len(FASHION_CLASSES)).any():
            raise DataError(
                f"{raw_dir / labels_name}: images per label {per_class.tolist()}, expected "
                f"{count // len(FASHION_CLASSES)} of each label 0..{len(FASHION_CLASSES) - 1}"
            )
        order = np.argsort(labels, kind="stable")  # by class, file order within a class
        arrays[split] = images[order].reshape(len(FASHION_CLASSES), -1, IMAGE_SIZE, IMAGE_SIZE)
    return {split: _write_split(out_dir, split, array, FASHION_CLASSES) for split, array in arrays.items()}


def _write_split(out_dir: Path, split: str, array: np.ndarray, names: Sequence[str]) -> Path:
    npy_path = out_dir / f"{split}.npy"
    with atomic_path(npy_path) as tmp:
        np.save(tmp, array, allow_pickle=False)
    atomic_write_text(out_dir / f"{split}_classes.txt", "".join(f"{n}\n" for n in names))
    log.info("wrote %s: %s classes", npy_path, len(names))
    return npy_path


def load_split(processed_dir: Path, split: str, *, mmap: bool = False) -> tuple[np.ndarray, list[str]]:
    """``{split}.npy`` and its class names, checked: uint8 ``[classes, per_class, 28, 28]`` (``per_class`` from the
    data), values in {0, 1} unless the split is Fashion-MNIST's (0..255), and a class list of ``classes``
    distinct names (``Alphabet/characterNN/rotDDD`` for Omniglot). ``mmap=True`` maps the array read-only.
    A damaged file's error says how to remake it, since Snakemake would not redo ``prepare`` by itself.
    """
    processed_dir = Path(processed_dir)
    npy_path = processed_dir / f"{split}.npy"
    classes_path = processed_dir / f"{split}_classes.txt"

    def fail(message: str) -> DataError:
        return DataError(f"{message}; {REMAKE_HINT}")

    if not npy_path.is_file():
        raise fail(f"processed split file {npy_path} not found (run the prepare step first)")
    try:
        array = np.load(npy_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise fail(f"{npy_path} is not a readable .npy file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE):
        shape = getattr(array, "shape", None)
        raise fail(f"{npy_path} has shape {shape}, expected (classes, images per class, {IMAGE_SIZE}, {IMAGE_SIZE})")
    if array.dtype != np.uint8:
        raise fail(f"{npy_path} has dtype {array.dtype}, expected uint8")
    if not is_fashion(split) and array.size and int(array.max()) > 1:
        raise fail(f"{npy_path} has values above 1; expected strokes = 1 and background = 0")
    if not classes_path.is_file():
        raise fail(f"class list {classes_path} not found (it belongs with {npy_path})")
    names = classes_path.read_text(encoding="utf-8").splitlines()
    if len(names) != array.shape[0]:
        raise fail(f"{classes_path} has {len(names)} lines but {npy_path} has {array.shape[0]} classes")
    for lineno, name in enumerate(names, start=1):
        if not (name.strip() if is_fashion(split) else _CLASS_RE.match(name)):
            expected = "a class name" if is_fashion(split) else "'Alphabet/characterNN/rotDDD'"
            raise fail(f"{classes_path}, line {lineno}: {name!r} is not {expected}")
    if len(set(names)) != len(names):
        raise fail(f"{classes_path} lists some class more than once")
    return array, names


def data_info(processed_dir: Path) -> dict:
    """Summarise and validate every ``{split}.npy`` in ``processed_dir``.

    Returns ``{split: {"classes", "images_per_class", "image_shape", "dtype", "class_names_match": True}}``,
    the Omniglot splits first, then Fashion-MNIST's, then any other, each checked by :func:`load_split`
    (memory-mapped), so a bad split raises :class:`DataError` rather than being reported.
    """
    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise DataError(f"processed data directory {processed_dir} not found")
    # Hidden files are atomic-write temporaries, never splits.
    found = [p.stem for p in processed_dir.glob("*.npy") if not p.name.startswith(".")]
    if not found:
        raise DataError(f"no {{split}}.npy files in {processed_dir}")
    known = (*SPLITS, *FASHION_SPLITS)
    order = sorted(found, key=lambda s: (known.index(s) if s in known else len(known), s))
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
