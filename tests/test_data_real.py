"""Download and prepare on the real Omniglot mirror: one download + one prepare of all four Vinyals splits.

The mirror is found by ``omniglot_fakes.real_mirror()`` (the variable, the CI mirror beside the clone, or a
mirror of the official zips fetched once into the user cache); if none works these tests fail, never skip.
"""

from __future__ import annotations

import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omniglot_fakes import (
    MIRROR_ENV,
    REPO_ROOT,
    UPSTREAM_ENV,
    ZIP_NAMES,
    list_files,
    make_fake_omniglot,
    real_mirror,
    reference_image,
)

from metacollapse.atomic import hash_file, sha256_file
from metacollapse.data import data_info, load_split, parse_checksum_file, prepare_splits
from metacollapse.download import REFERENCE_SHA256, UPSTREAM_MD5, download_omniglot, unverified_files

SPLITS_DIR = REPO_ROOT / "data" / "splits" / "vinyals"
EXPECTED_CLASSES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
# md5 of the split lists as published in jakesnell/prototypical-networks (data/omniglot/splits/vinyals/).
SPLIT_LIST_MD5 = {
    "train.txt": "433d1fcc2b20dcee2983ceb524586f7f",
    "val.txt": "78c535fa427b12b6596908376a0b3f34",
    "trainval.txt": "888433268015439fd05fb6e9006ead50",
    "test.txt": "43534e6d5f9e74acbb7de1b4874abad8",
}


@dataclass
class Prepared:
    mirror: Path
    raw: Path
    processed: Path
    zips: list[Path]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    mirror = real_mirror()
    root = tmp_path_factory.mktemp("omniglot_real")
    zips = download_omniglot(root / "raw", str(mirror))
    prepare_splits(root / "raw", SPLITS_DIR, root / "processed")
    return Prepared(mirror, root / "raw", root / "processed", zips)


def test_download_from_real_mirror(prepared: Prepared) -> None:
    sums = parse_checksum_file((prepared.mirror / "SHA256SUMS").read_text(), "SHA256SUMS")
    assert prepared.zips == [prepared.raw / name for name in ZIP_NAMES]
    for path in prepared.zips:
        assert sha256_file(path) == sums[path.name]
    assert list_files(prepared.raw) == sorted(ZIP_NAMES)
    # A second call finds both files verified and keeps them.
    mtimes = [p.stat().st_mtime_ns for p in prepared.zips]
    assert download_omniglot(prepared.raw, prepared.mirror.as_uri()) == prepared.zips
    assert [p.stat().st_mtime_ns for p in prepared.zips] == mtimes


def test_real_zips_are_known_good(prepared: Prepared) -> None:
    # Each real zip is either the 2015 original or the reference rebuild; which one depends on the mirror.
    for path in prepared.zips:
        assert hash_file(path, "md5") == UPSTREAM_MD5[path.name] or sha256_file(path) == REFERENCE_SHA256[path.name]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finished_raw_dir_needs_no_source(prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified real zips are kept whatever source is configured now, and no source is even contacted."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in prepared.zips:
        os.link(path, raw / path.name)
    before = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in raw.iterdir()}
    # Any attempt to reach a source fails at once, without the network.
    monkeypatch.setenv(UPSTREAM_ENV, f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    other = make_fake_omniglot(tmp_path / "other").mirror  # a reachable mirror listing different zips
    missing = tmp_path / "no-such-mirror"
    expected = [raw / name for name in ZIP_NAMES]
    assert download_omniglot(raw) == expected  # mirror omitted
    assert download_omniglot(raw, str(other)) == expected  # mirror changed
    assert download_omniglot(raw, str(missing)) == expected  # mirror changed to one that is gone
    monkeypatch.setenv(MIRROR_ENV, str(missing))
    assert download_omniglot(raw) == expected
    assert unverified_files(raw) == unverified_files(raw, str(other)) == []  # known good, whatever the source
    assert {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in raw.iterdir()} == before


def test_committed_split_lists_are_the_published_ones() -> None:
    committed = parse_checksum_file((SPLITS_DIR / "SHA256SUMS").read_text(), "committed")
    assert sorted(committed) == sorted(SPLIT_LIST_MD5)
    for name, md5 in SPLIT_LIST_MD5.items():
        assert hash_file(SPLITS_DIR / name, "md5") == md5, name
        assert sha256_file(SPLITS_DIR / name) == committed[name], name
    # The CI mirror carries its own copy of the lists; a mirror made from the official zips has none.
    shared = real_mirror() / "splits" / "vinyals" / "SHA256SUMS"
    if shared.is_file():
        assert parse_checksum_file(shared.read_text(), str(shared)) == committed


def test_data_info_real(prepared: Prepared) -> None:
    info = data_info(prepared.processed)
    assert {s: v["classes"] for s, v in info.items()} == EXPECTED_CLASSES
    for v in info.values():
        assert v == {**v, "images_per_class": 20, "image_shape": [28, 28], "dtype": "uint8", "class_names_match": True}
    assert sorted(list_files(prepared.processed)) == sorted(
        f"{s}{ext}" for s in EXPECTED_CLASSES for ext in (".npy", "_classes.txt")
    )


def test_class_lists_and_trainval_composition(prepared: Prepared) -> None:
    arrays = {s: load_split(prepared.processed, s, mmap=True) for s in EXPECTED_CLASSES}
    for split, (_, names) in arrays.items():
        assert names == (SPLITS_DIR / f"{split}.txt").read_text().splitlines()
    train, train_names = arrays["train"]
    val, val_names = arrays["val"]
    trainval, trainval_names = arrays["trainval"]
    assert trainval_names == train_names + val_names
    np.testing.assert_array_equal(trainval[: len(train)], train)
    np.testing.assert_array_equal(trainval[len(train) :], val)
    assert not set(trainval_names) & set(arrays["test"][1])


def test_pixel_sanity(prepared: Prepared) -> None:
    for split in EXPECTED_CLASSES:
        array, _ = load_split(prepared.processed, split)
        assert set(np.unique(array)) == {0, 1}
        # Strokes are a small minority of the pixels (about 8% on all splits), and every drawing has some.
        assert 0.05 < array.mean() < 0.12, split
        per_image = array.reshape(len(array), 20, -1).mean(axis=2)
        assert per_image.min() > 0 and per_image.max() < 0.4, split
        # The border is almost all background (the drawings are centred in the 105x105 canvas).
        assert array[:, :, 0, :].mean() < 0.01 and array[:, :, :, -1].mean() < 0.01, split
        # Drawings are grouped by class: a nearest-class-mean classifier on raw pixels (means from drawings
        # 0-9, queries 10-19, 200 classes) is far above chance (0.5%); it scores 22-41% on these splits.
        x = array[:200].reshape(200, 20, -1).astype(np.float32)
        means, queries = x[:, :10].mean(axis=1), x[:, 10:].reshape(-1, x.shape[2])
        dist = (queries**2).sum(1)[:, None] - 2 * queries @ means.T + (means**2).sum(1)[None]
        accuracy = (dist.argmin(axis=1) == np.repeat(np.arange(200), 10)).mean()
        assert accuracy > 0.1, (split, accuracy)


def test_rotation_classes_are_exact_quarter_turns(prepared: Prepared) -> None:
    array, names = load_split(prepared.processed, "trainval")
    index = {n: i for i, n in enumerate(names)}
    for name, i in index.items():
        character, rot = name.rsplit("/", 1)
        upright = array[index[f"{character}/rot000"]]
        np.testing.assert_array_equal(array[i], np.rot90(upright, int(rot[3:]) // 90, axes=(1, 2)), err_msg=name)


def test_matches_the_original_loader_without_its_transpose(prepared: Prepared) -> None:
    """A sample of classes against ``reference_image`` (rotate -> resize -> 1 - x, minus the transpose)."""
    zips = {name: zipfile.ZipFile(prepared.raw / name) for name in ZIP_NAMES}
    try:
        folders: dict[str, tuple[str, list[str]]] = {}
        for zip_name, zf in zips.items():
            for entry in zf.namelist():
                parts = entry.split("/")
                if len(parts) == 4 and parts[3].endswith(".png"):
                    folders.setdefault(f"{parts[1]}/{parts[2]}", (zip_name, []))[1].append(entry)
        rng = np.random.default_rng(0)
        for split in ("train", "test"):
            array, names = load_split(prepared.processed, split, mmap=True)
            for c in sorted(rng.choice(len(names), size=40, replace=False)):
                character, rot = names[c].rsplit("/", 1)
                zip_name, entries = folders[character]
                entries = sorted(entries, key=lambda e: e.rsplit("/", 1)[1])
                expected = np.stack([reference_image(zips[zip_name].read(e), int(rot[3:])) for e in entries])
                np.testing.assert_array_equal(array[c], expected, err_msg=names[c])
                # The original loader's .transpose(0, 1) would give the transposed images instead.
                if not np.array_equal(expected, expected.transpose(0, 2, 1)):
                    assert not np.array_equal(array[c], expected.transpose(0, 2, 1))
    finally:
        for zf in zips.values():
            zf.close()


def test_prepare_is_deterministic_on_real_data(prepared: Prepared, tmp_path: Path) -> None:
    # One more split (the smallest) is enough to check byte-identical output against the module fixture.
    prepare_splits(prepared.raw, SPLITS_DIR, tmp_path, ["val"])
    for name in ("val.npy", "val_classes.txt"):
        assert (tmp_path / name).read_bytes() == (prepared.processed / name).read_bytes()
