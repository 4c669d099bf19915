"""Test helpers for the data layer: small synthetic Omniglot-shaped mirrors, and the real mirrors' locations.

The real Omniglot mirror is found (or made once in the user cache) by :func:`real_mirror`, Debian's Fashion-MNIST
folder by :func:`debian_fashion_mirror`. A fake mirror is a folder with ``images_background.zip``,
``images_evaluation.zip`` (layout ``images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png``, 105x105 1-bit PNGs,
as in the real zips) and a ``SHA256SUMS``, plus a split-list folder with ``{split}.txt`` and its own
``SHA256SUMS``. Every image is deterministic, different for every (character, drawer), and asymmetric (a big
stroke block in the upper-left quadrant) so that rotation direction and drawer order can be checked.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metacollapse.data import DataError
from metacollapse.download import DEBIAN_FASHION_DIR, download_omniglot, make_mirror

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR_ENV = "METACOLLAPSE_OMNIGLOT_MIRROR"
UPSTREAM_ENV = "METACOLLAPSE_OMNIGLOT_UPSTREAM"
ZIP_NAMES = ("images_background.zip", "images_evaluation.zip")
FASHION_MIRROR_ENV = "METACOLLAPSE_FASHION_MIRROR"
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# zip name -> alphabet -> number of characters. The names include the odd characters real alphabets have.
DEFAULT_LAYOUT: dict[str, dict[str, int]] = {
    "images_background.zip": {"Alpha": 2, "Beta_(b)": 1},
    "images_evaluation.zip": {"Gamma": 2},
}
# Deliberately not sorted, and mixing both zips within a split, so order preservation is tested.
DEFAULT_SPLITS: dict[str, list[str]] = {
    "train": [
        "Gamma/character02/rot090",
        "Alpha/character01/rot000",
        "Alpha/character01/rot090",
        "Alpha/character01/rot180",
        "Alpha/character01/rot270",
    ],
    "val": ["Beta_(b)/character01/rot270", "Beta_(b)/character01/rot000"],
    "test": ["Gamma/character01/rot000", "Alpha/character02/rot180", "Gamma/character01/rot090"],
}
DEFAULT_SPLITS["trainval"] = DEFAULT_SPLITS["train"] + DEFAULT_SPLITS["val"]


def cache_mirror_dir() -> Path:
    """The tests' own mirror of the official zips: ``${XDG_CACHE_HOME:-~/.cache}/metacollapse/omniglot``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "metacollapse" / "omniglot"


def _missing(folder: Path) -> list[str]:
    return [name for name in (*ZIP_NAMES, "SHA256SUMS") if not (folder / name).is_file()]


_HOW_TO = (
    f"set {MIRROR_ENV} to a folder holding {', '.join(ZIP_NAMES)} and a SHA256SUMS in sha256sum format "
    f"(in that folder: `sha256sum {' '.join(ZIP_NAMES)} > SHA256SUMS`, or call "
    "metacollapse.download.make_mirror(zips_dir, mirror_dir))"
)


@functools.cache
def real_mirror() -> Path:
    """The real Omniglot image set as a download mirror (a folder with both zips and ``SHA256SUMS``).

    In order: ``$METACOLLAPSE_OMNIGLOT_MIRROR`` if set (it must then be complete); ``<repo>/../shared/data/omniglot``
    (CI has it); the user cache ``cache_mirror_dir()``, which on first use is filled once with the official zips
    by ``download_omniglot`` and made a mirror by ``make_mirror``. Fails the calling test (never skips) with
    what to do if none of these works.
    """
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        mirror = Path(env).expanduser()
        missing = _missing(mirror)
        if missing:
            pytest.fail(f"{MIRROR_ENV}={env!r} is not an Omniglot mirror (missing {', '.join(missing)}); {_HOW_TO}")
        return mirror.resolve()
    default = REPO_ROOT.parent / "shared" / "data" / "omniglot"
    if not _missing(default):
        return default.resolve()
    cache = cache_mirror_dir()
    if _missing(cache):
        try:
            download_omniglot(cache, None)  # the official upstream: the mirror variable is unset here
            make_mirror(cache, cache)
        except (DataError, OSError) as exc:
            pytest.fail(
                f"no Omniglot mirror: {MIRROR_ENV} is not set, {default} is missing, and fetching the official "
                f"zips into {cache} failed ({exc}); {_HOW_TO}"
            )
    return cache.resolve()


def debian_fashion_mirror() -> Path:
    """Debian's Fashion-MNIST folder, a mirror as it is (no SHA256SUMS). Fails (never skips) when it is missing."""
    missing = [name for name in FASHION_FILES if not (DEBIAN_FASHION_DIR / name).is_file()]
    if missing:
        pytest.fail(
            f"no Fashion-MNIST files in {DEBIAN_FASHION_DIR} (missing {', '.join(missing)}); install them with "
            "`apt-get install -y dataset-fashion-mnist`"
        )
    return DEBIAN_FASHION_DIR


def fake_glyph(seed: int, size: int = 105) -> np.ndarray:
    """Boolean image, True = white background, False = stroke (PIL mode "1" convention of Omniglot PNGs)."""
    rng = np.random.default_rng(seed)
    img = np.ones((size, size), dtype=bool)
    # A fixed stroke block in the upper-left quadrant: makes every image asymmetric under rotation.
    img[8:40, 8:30] = False
    # A few random thin strokes, different for every seed.
    for _ in range(4):
        r, c = (int(v) for v in rng.integers(0, size - 12, size=2))
        if rng.random() < 0.5:
            img[r : r + 3, c : c + 12] = False
        else:
            img[r : r + 12, c : c + 3] = False
    return img


def png_bytes(img: np.ndarray | Image.Image) -> bytes:
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sha256sums(folder: Path, names: Sequence[str], extra: Mapping[str, str] | None = None) -> Path:
    """``folder/SHA256SUMS`` for the named files (plus ``extra`` name -> digest lines, e.g. wrong ones)."""
    lines = {name: sha256_bytes((folder / name).read_bytes()) for name in names}
    lines.update(extra or {})
    path = folder / "SHA256SUMS"
    path.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(lines.items())))
    return path


def write_split_lists(splits_dir: Path, splits: Mapping[str, Sequence[str]]) -> Path:
    """``{split}.txt`` files (one class per line) and their ``SHA256SUMS`` in ``splits_dir``."""
    splits_dir.mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (splits_dir / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    write_sha256sums(splits_dir, [f"{s}.txt" for s in splits])
    return splits_dir


@dataclass
class FakeOmniglot:
    mirror: Path  # folder with both zips and SHA256SUMS (a valid download mirror)
    splits_dir: Path  # split lists + SHA256SUMS
    splits: dict[str, list[str]]
    # "Alphabet/characterNN" -> [(zip name, entry name, png bytes)] sorted by file name (= expected order)
    images: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)

    @property
    def zips(self) -> list[Path]:
        return [self.mirror / name for name in ZIP_NAMES]


def build_zip(path: Path, entries: Sequence[tuple[str, bytes | None]]) -> Path:
    """A stored (uncompressed) zip; ``None`` data makes a directory entry. Written in the given order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if data is None:
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                zf.writestr(info, data)
    return path


def make_fake_omniglot(
    root: Path,
    *,
    layout: Mapping[str, Mapping[str, int]] = DEFAULT_LAYOUT,
    splits: Mapping[str, Sequence[str]] = DEFAULT_SPLITS,
    images_per_character: Mapping[str, int] | None = None,
    overrides: Mapping[tuple[str, int], bytes] | None = None,
) -> FakeOmniglot:
    """Build a fake mirror under ``root/mirror`` and split lists under ``root/splits``.

    ``images_per_character`` maps ``"Alphabet/characterNN"`` to an image count other than 20;
    ``overrides`` maps ``("Alphabet/characterNN", drawer index 0..19)`` to PNG bytes stored instead of the
    generated image (e.g. a wrongly sized image). Zip entries are written in shuffled order so that the
    reader must sort them by file name itself.
    """
    mirror = root / "mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    counts = dict(images_per_character or {})
    overrides = dict(overrides or {})
    images: dict[str, list[tuple[str, str, bytes]]] = {}
    char_id = 0
    for zip_name, alphabets in layout.items():
        top = zip_name.removesuffix(".zip")
        dirs: list[tuple[str, bytes | None]] = [(f"{top}/", None)]
        files: list[tuple[str, bytes | None]] = []
        for alphabet, n_chars in alphabets.items():
            dirs.append((f"{top}/{alphabet}/", None))
            for c in range(1, n_chars + 1):
                char_id += 1
                character = f"{alphabet}/character{c:02d}"
                dirs.append((f"{top}/{character}/", None))
                images[character] = []
                for d in range(counts.get(character, 20)):
                    data = overrides.get((character, d)) or png_bytes(fake_glyph(1000 * char_id + d))
                    entry = f"{top}/{character}/{char_id:04d}_{d + 1:02d}.png"
                    images[character].append((zip_name, entry, data))
                    files.append((entry, data))
        random.Random(zip_name).shuffle(files)
        build_zip(mirror / zip_name, dirs + files)
    write_sha256sums(mirror, list(layout))
    splits_dir = write_split_lists(root / "splits", splits)
    return FakeOmniglot(
        mirror=mirror, splits_dir=splits_dir, splits={k: list(v) for k, v in splits.items()}, images=images
    )


def reference_image(png: bytes, rotation: int) -> np.ndarray:
    """The original ProtoNet loader's preprocessing, written independently with ``Image.rotate``.

    jakesnell/prototypical-networks: ``Image.open`` -> ``rotate(rot)`` -> ``resize((28, 28))`` ->
    ``1 - np.array(float32)`` -> ``.transpose(0, 1)``. We leave out the final transpose (documented in
    docs/data.md), so this returns the upright uint8 image, strokes = 1.
    """
    with Image.open(io.BytesIO(png)) as im:
        arr = 1.0 - np.array(im.rotate(rotation).resize((28, 28)), np.float32)
    return arr.astype(np.uint8)


def list_files(folder: Path) -> list[str]:
    """All file names in ``folder`` (hidden temporaries included), sorted; [] if it does not exist."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
