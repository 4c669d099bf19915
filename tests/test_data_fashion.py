"""Fashion-MNIST: download verified by decompressed content, mirrors, prepare and loading.

Debian's package dataset-fashion-mnist is the tests' mirror (``omniglot_fakes.debian_fashion_mirror``; missing
means fail, not skip). Its .gz files are recompressed, so only their decompressed content identifies them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omniglot_fakes import FASHION_FILES, FASHION_MIRROR_ENV, debian_fashion_mirror, list_files

from metacollapse import download
from metacollapse.atomic import hash_file, sha256_file
from metacollapse.cli import main
from metacollapse.data import FASHION_CLASSES, DataError, data_info, load_split, pixel_scale, prepare_fashion
from metacollapse.download import (
    FASHION_CONTENT_SHA256,
    content_sha256,
    download_fashion,
    make_mirror,
    unverified_files,
)
from metacollapse.episodes import split_to_device

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = FASHION_FILES


@pytest.fixture(autouse=True)
def _no_mirror_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FASHION_MIRROR_ENV, raising=False)


@pytest.fixture(scope="module")
def debian() -> Path:
    return debian_fashion_mirror()


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, debian: Path) -> Path:
    out = tmp_path_factory.mktemp("fashion") / "raw"
    download_fashion(out, str(debian))
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, fetched: Path) -> Path:
    out = tmp_path_factory.mktemp("fashion") / "processed"
    prepare_fashion(fetched, out)
    return out


def _idx(path: Path) -> np.ndarray:
    """An idx file read as Fashion-MNIST's own utils/mnist_reader.py does: fixed header lengths, no checks."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    return np.frombuffer(data, dtype=np.uint8, offset=16 if "images" in path.name else 8)


def _raw_copy(fetched: Path, folder: Path, *leave_out: str) -> Path:
    """``folder`` with hard links to the verified files, except ``leave_out``."""
    folder.mkdir(parents=True)
    for name in FASHION_FILES:
        if name not in leave_out:
            os.link(fetched / name, folder / name)
    return folder


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_content_pins_are_the_debian_files_decompressed_in_the_published_format(debian: Path) -> None:
    counts = {"train": 60_000, "t10k": 10_000}
    for name in FASHION_FILES:
        assert content_sha256(debian / name) == FASHION_CONTENT_SHA256[name], name
        with gzip.open(debian / name, "rb") as fh:
            data = fh.read()
        count = counts[name.split("-")[0]]
        if "images" in name:  # magic 0x00000803 (uint8, 3 dimensions), then 60000|10000, 28, 28 big-endian
            assert data[:16] == bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
            assert len(data) == 16 + count * 28 * 28
        else:
            assert data[:8] == bytes([0, 0, 8, 1]) + count.to_bytes(4, "big")
            assert len(data) == 8 + count
            assert np.bincount(np.frombuffer(data, np.uint8, offset=8)).tolist() == [count // 10] * 10


def test_the_debian_folder_is_a_mirror_as_it_is(
    fetched: Path, debian: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not (debian / "SHA256SUMS").exists()
    assert list_files(fetched) == sorted(FASHION_FILES)  # nothing else, no temporaries
    for name in FASHION_FILES:
        assert (fetched / name).read_bytes() == (debian / name).read_bytes()
    # Verified files are kept without any source: here the mirror named by the variable is gone.
    raw = _raw_copy(fetched, tmp_path / "raw")
    mtimes = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    monkeypatch.setenv(FASHION_MIRROR_ENV, str(tmp_path / "gone"))
    assert download_fashion(raw) == [raw / name for name in FASHION_FILES]
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes
    assert unverified_files(raw, dataset="fashion") == []
    # The variable is the mirror when no argument is given.
    monkeypatch.setenv(FASHION_MIRROR_ENV, str(debian))
    assert main(["download", "--dataset", "fashion", "--out-dir", str(tmp_path / "cli")]) == 0
    assert all(sha256_file(tmp_path / "cli" / n) == sha256_file(debian / n) for n in FASHION_FILES)


def test_a_gz_is_accepted_for_its_content_whatever_its_compression(fetched: Path, tmp_path: Path) -> None:
    mirror = _raw_copy(fetched, tmp_path / "mirror", TRAIN_LABELS, TEST_LABELS)
    for name in (TRAIN_LABELS, TEST_LABELS):
        with gzip.open(fetched / name, "rb") as fh:
            (mirror / name).write_bytes(gzip.compress(fh.read(), compresslevel=1, mtime=0))
        assert hash_file(mirror / name, "md5") != hash_file(fetched / name, "md5")
    out = download_fashion(tmp_path / "raw", str(mirror))
    assert [p.read_bytes() for p in out] == [(mirror / n).read_bytes() for n in FASHION_FILES]
    # Present and recompressed differently from the mirror's copy: kept as it is.
    kept = {p.name: p.stat().st_mtime_ns for p in out}
    download_fashion(tmp_path / "raw", str(fetched))
    assert {p.name: p.stat().st_mtime_ns for p in out} == kept


def test_a_gz_whose_content_differs_is_refused_naming_file_source_and_digests(fetched: Path, tmp_path: Path) -> None:
    with gzip.open(fetched / TEST_LABELS, "rb") as fh:
        labels = bytearray(fh.read())
    labels[100] = (labels[100] + 1) % 10  # one label changed
    mirror = _raw_copy(fetched, tmp_path / "mirror", TEST_LABELS)
    (mirror / TEST_LABELS).write_bytes(gzip.compress(bytes(labels), mtime=0))
    raw = _raw_copy(fetched, tmp_path / "raw", TEST_LABELS)
    with pytest.raises(DataError) as err:
        download_fashion(raw, str(mirror))
    msg = str(err.value)
    assert f"checksum mismatch for {TEST_LABELS} from {(mirror / TEST_LABELS).as_uri()}" in msg
    assert f"expected decompressed sha256 {FASHION_CONTENT_SHA256[TEST_LABELS]}" in msg
    assert f"actual {hashlib.sha256(labels).hexdigest()}" in msg
    assert list_files(raw) == sorted(set(FASHION_FILES) - {TEST_LABELS})  # nothing left, no temporaries

    (mirror / TEST_LABELS).write_bytes(b"not gzip")
    with pytest.raises(DataError, match=rf"{TEST_LABELS} from .* is not a readable gzip file"):
        download_fashion(raw, str(mirror))
    assert list_files(raw) == sorted(set(FASHION_FILES) - {TEST_LABELS})


def test_a_present_file_of_other_content_is_unverified_and_replaced(
    fetched: Path, debian: Path, tmp_path: Path
) -> None:
    raw = _raw_copy(fetched, tmp_path / "raw", TRAIN_LABELS)
    (raw / TRAIN_LABELS).write_bytes(gzip.compress(b"\0\0\x08\x01", mtime=0))
    assert unverified_files(raw, str(tmp_path / "gone"), "fashion") == [raw / TRAIN_LABELS]
    download_fashion(raw, str(debian))
    assert (raw / TRAIN_LABELS).read_bytes() == (debian / TRAIN_LABELS).read_bytes()
    assert unverified_files(raw, dataset="fashion") == []


def test_make_mirror_writes_sha256sums_that_downloads_then_check(debian: Path, fetched: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    assert main(["make-mirror", "--dataset", "fashion", str(debian), str(mirror)]) == 0
    sums = mirror / "SHA256SUMS"
    assert sums.read_text() == "".join(f"{sha256_file(debian / n)}  {n}\n" for n in FASHION_FILES)
    assert list_files(mirror) == sorted([*FASHION_FILES, "SHA256SUMS"])
    raw = download_fashion(tmp_path / "raw", str(mirror))
    assert [p.read_bytes() for p in raw] == [(debian / n).read_bytes() for n in FASHION_FILES]

    # A mirror's SHA256SUMS is checked too: a wrong entry is a mismatch naming both digests ...
    wrong = "ab" * 32
    sums.write_text(sums.read_text().replace(sha256_file(debian / TEST_LABELS), wrong))
    partial = _raw_copy(fetched, tmp_path / "partial", TEST_LABELS)
    with pytest.raises(DataError) as err:
        download_fashion(partial, str(mirror))
    msg = str(err.value)
    assert f"checksum mismatch for {TEST_LABELS}" in msg and f"expected sha256 {wrong}" in msg
    assert f"actual {sha256_file(debian / TEST_LABELS)}" in msg
    # ... and one without every file's entry is refused before anything is downloaded.
    sums.write_text(f"{sha256_file(debian / TRAIN_LABELS)}  {TRAIN_LABELS}\n")
    with pytest.raises(DataError, match=rf"no checksum for {TRAIN_IMAGES} in .*SHA256SUMS"):
        download_fashion(tmp_path / "empty", str(mirror))
    assert list_files(tmp_path / "empty") == []


def test_make_mirror_refuses_files_that_are_not_fashion_mnist(fetched: Path, tmp_path: Path) -> None:
    files = _raw_copy(fetched, tmp_path / "files", TRAIN_LABELS)
    with pytest.raises(DataError, match=rf"{TRAIN_LABELS} not found"):
        make_mirror(files, tmp_path / "m1", "fashion")
    (files / TRAIN_LABELS).write_bytes(gzip.compress(b"other", mtime=0))
    with pytest.raises(DataError) as err:
        make_mirror(files, tmp_path / "m2", "fashion")
    msg = str(err.value)
    assert TRAIN_LABELS in msg and hashlib.sha256(b"other").hexdigest() in msg
    assert FASHION_CONTENT_SHA256[TRAIN_LABELS] in msg
    assert list_files(tmp_path / "m1") == list_files(tmp_path / "m2") == []


def test_without_network_or_mirror_the_error_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setattr(download, "FASHION_UPSTREAM_URL", url)
    with pytest.raises(DataError) as err:
        download_fashion(tmp_path / "raw")
    msg = str(err.value)
    assert f"cannot download {TRAIN_IMAGES} from {url}{TRAIN_IMAGES}" in msg
    assert f"expected md5 {download.FASHION_UPSTREAM_MD5[TRAIN_IMAGES]}" in msg
    assert "`fashion_mirror`" in msg and f"${FASHION_MIRROR_ENV}" in msg
    assert "metacollapse make-mirror --dataset fashion" in msg and "/usr/share/datasets/fashion-mnist" in msg
    assert list_files(tmp_path / "raw") == []
    with pytest.raises(DataError, match=r"mirror folder .*gone not found.*METACOLLAPSE_FASHION_MIRROR"):
        download_fashion(tmp_path / "raw", str(tmp_path / "gone"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server API
        pass


@pytest.fixture
def served_debian(debian: Path) -> Iterator[str]:
    """Debian's folder over HTTP, as the upstream would serve its files."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(debian)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_upstream_files_are_checked_against_the_published_md5s(
    served_debian: str, debian: Path, fetched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "FASHION_UPSTREAM_URL", served_debian)
    raw = _raw_copy(fetched, tmp_path / "raw", TRAIN_LABELS)
    with pytest.raises(DataError) as err:  # Debian recompressed the files: their md5s are not the published ones
        download_fashion(raw)
    msg = str(err.value)
    assert f"checksum mismatch for {TRAIN_LABELS} from {served_debian}{TRAIN_LABELS}" in msg
    assert f"expected md5 {download.FASHION_UPSTREAM_MD5[TRAIN_LABELS]}" in msg
    assert f"actual {hash_file(debian / TRAIN_LABELS, 'md5')}" in msg
    assert list_files(raw) == sorted(set(FASHION_FILES) - {TRAIN_LABELS})
    # An upstream whose files match its md5s (here: Debian's own) downloads over HTTP.
    monkeypatch.setattr(download, "FASHION_UPSTREAM_MD5", {n: hash_file(debian / n, "md5") for n in FASHION_FILES})
    download_fashion(raw)
    assert (raw / TRAIN_LABELS).read_bytes() == (debian / TRAIN_LABELS).read_bytes()


def test_prepare_fashion_groups_each_class_in_file_order(fetched: Path, prepared: Path) -> None:
    info = data_info(prepared)
    assert list(info) == ["fashion_train", "fashion_test"]
    for split, images_name, labels_name, per_class in (
        ("fashion_train", TRAIN_IMAGES, TRAIN_LABELS, 6000),
        ("fashion_test", TEST_IMAGES, TEST_LABELS, 1000),
    ):
        array, names = load_split(prepared, split)
        assert array.shape == (10, per_class, 28, 28) and array.dtype == np.uint8
        assert names == list(FASHION_CLASSES) == (prepared / f"{split}_classes.txt").read_text().splitlines()
        assert info[split]["images_per_class"] == per_class
        images = _idx(fetched / images_name).reshape(-1, 28, 28)
        labels = _idx(fetched / labels_name)
        for c in range(10):
            np.testing.assert_array_equal(array[c], images[labels == c], err_msg=f"{split} class {c}")
        # Grey levels 0..255 as stored: black background, and every image has some bright pixels.
        assert array.min() == 0 and array.max() == 255
        assert (array.reshape(10 * per_class, -1).max(axis=1) > 100).all()
        assert 0.2 < array.mean() / 255 < 0.4
    assert list_files(prepared) == sorted(f"{s}{e}" for s in info for e in (".npy", "_classes.txt"))


def test_prepare_fashion_is_byte_deterministic(fetched: Path, prepared: Path, tmp_path: Path) -> None:
    assert main(["prepare-fashion", "--raw-dir", str(fetched), "--out-dir", str(tmp_path)]) == 0
    for path in prepared.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_truncated_gz_says_how_to_fetch_it_again(fetched: Path, tmp_path: Path) -> None:
    raw = _raw_copy(fetched, tmp_path / "raw", TEST_IMAGES)
    (raw / TEST_IMAGES).write_bytes((fetched / TEST_IMAGES).read_bytes()[:100_000])
    with pytest.raises(DataError) as err:
        prepare_fashion(raw, tmp_path / "out")
    msg = str(err.value)
    assert f"{raw / TEST_IMAGES} is not a readable gzip file" in msg
    assert "snakemake --cores all --forcerun download_fashion`" in msg
    assert "`fashion_mirror`" in msg and f"${FASHION_MIRROR_ENV}" in msg
    assert list_files(tmp_path / "out") == []  # neither split written


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        (TEST_LABELS, b"\0\0\x08\x03" + (10_000).to_bytes(4, "big"), "idx header 00000803, expected 00000801"),
        (TEST_LABELS, b"\0\0\x08\x01" + (9_999).to_bytes(4, "big") + bytes(9_999), "dimensions (9999,)"),
        (TEST_LABELS, b"\0\0\x08\x01" + (10_000).to_bytes(4, "big") + bytes(9_000), "9000 data bytes"),
        (TEST_LABELS, b"\0\0\x08\x01" + (10_000).to_bytes(4, "big") + bytes(10_000), "images per label [10000"),
    ],
)
def test_prepare_fashion_checks_the_idx_layout(
    fetched: Path, tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    raw = _raw_copy(fetched, tmp_path / "raw", name)
    (raw / name).write_bytes(gzip.compress(content, mtime=0))
    with pytest.raises(DataError) as err:
        prepare_fashion(raw, tmp_path / "out")
    assert str(raw / name) in str(err.value) and needle in str(err.value)
    assert list_files(tmp_path / "out") == []


def test_a_fashion_split_reaches_the_device_as_floats_in_the_unit_interval(prepared: Path) -> None:
    array, _ = load_split(prepared, "fashion_test")
    split = split_to_device(array, "cpu", pixel_scale("fashion_test"))
    assert split.dtype == torch.float32 and split.shape == array.shape
    assert torch.equal(split, torch.from_numpy(array).float() * np.float32(1 / 255))
    assert float(split.min()) == 0.0 and float(split.max()) == 1.0
    unscaled = split_to_device(array, "cpu")
    assert unscaled.dtype == torch.uint8 and torch.equal(unscaled, torch.from_numpy(array))
