"""metacollapse.download, metacollapse.data (and metacollapse.atomic) on small synthetic Omniglot-shaped zips."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from omniglot_fakes import (
    DEFAULT_SPLITS,
    MIRROR_ENV,
    UPSTREAM_ENV,
    ZIP_NAMES,
    FakeOmniglot,
    build_zip,
    fake_glyph,
    list_files,
    make_fake_omniglot,
    png_bytes,
    reference_image,
    sha256_bytes,
    write_sha256sums,
    write_split_lists,
)

from metacollapse import download
from metacollapse.atomic import atomic_path, atomic_write_bytes, atomic_write_text, hash_file, sha256_file
from metacollapse.cli import main
from metacollapse.data import DataError, data_info, load_split, pixel_scale, prepare_splits
from metacollapse.download import download_omniglot, make_mirror, unverified_files


@pytest.fixture(autouse=True)
def _no_source_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here names its own source; a mirror or upstream set in the caller's environment must not leak in."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.delenv(UPSTREAM_ENV, raising=False)


@pytest.fixture
def fake(tmp_path: Path) -> FakeOmniglot:
    return make_fake_omniglot(tmp_path / "fake")


def _raw_from(fake: FakeOmniglot, raw: Path) -> Path:
    """A raw folder holding the fake's zips (what the download step would leave)."""
    raw.mkdir(parents=True, exist_ok=True)
    for path in fake.zips:
        (raw / path.name).write_bytes(path.read_bytes())
    return raw


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


# ----------------------------------------------------------------------------------------------------------
# atomic helpers
# ----------------------------------------------------------------------------------------------------------


def test_atomic_path_replaces_on_success_and_keeps_suffix(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))  # np.save would append ".npy" to a temp name without that suffix
    assert np.array_equal(np.load(target), np.arange(3))
    assert list_files(target.parent) == ["x.npy"]


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.txt", "old\n")
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        _ = 1 / 0
    assert target.read_text() == "old\n"
    assert list_files(tmp_path) == ["a.txt"]
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(tmp_path / "b.txt"):
        pass
    assert list_files(tmp_path) == ["a.txt"]


def test_atomic_write_bytes_and_hashes(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "b.bin", b"hello", fsync=False)
    assert path.read_bytes() == b"hello"
    assert sha256_file(path) == hashlib.sha256(b"hello").hexdigest()
    assert hash_file(path, "md5") == hashlib.md5(b"hello").hexdigest()


# ----------------------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------------------


def test_upstream_constants_are_the_torchvision_pins() -> None:
    assert download.UPSTREAM_URL == "https://github.com/brendenlake/omniglot/raw/master/python/"
    assert download.UPSTREAM_MD5 == {
        "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
        "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    }


@pytest.mark.parametrize("form", ["folder", "file_url", "file_url_slash"])
def test_download_from_local_mirror(fake: FakeOmniglot, tmp_path: Path, form: str) -> None:
    mirror = {
        "folder": str(fake.mirror),
        "file_url": fake.mirror.as_uri(),
        "file_url_slash": fake.mirror.as_uri() + "/",
    }[form]
    out = tmp_path / "raw"
    paths = download_omniglot(out, mirror)
    assert paths == [out / name for name in ZIP_NAMES]
    for path in paths:
        assert path.read_bytes() == (fake.mirror / path.name).read_bytes()
    assert list_files(out) == sorted(ZIP_NAMES)  # no temporaries, no extra files


def test_download_skips_verified_existing_file(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    download_omniglot(out, str(fake.mirror))
    stats = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # With the zips gone from the mirror, only the skip path can succeed.
    for path in fake.zips:
        path.unlink()
    assert download_omniglot(out, str(fake.mirror)) == [out / name for name in ZIP_NAMES]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stats


def test_download_replaces_corrupt_existing_file(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / ZIP_NAMES[0]).write_bytes(b"garbage")
    download_omniglot(out, str(fake.mirror))
    assert (out / ZIP_NAMES[0]).read_bytes() == fake.zips[0].read_bytes()


def _write_md5sums(folder: Path, files: list[Path]) -> Path:
    """``folder/MD5SUMS`` (``md5sum`` format) for ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "MD5SUMS"
    path.write_text("".join(f"{hash_file(f, 'md5')}  {f.name}\n" for f in files))
    return path


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_constants_name_the_environment_variables() -> None:
    assert download.MIRROR_ENV == MIRROR_ENV == "METACOLLAPSE_OMNIGLOT_MIRROR"
    assert download.UPSTREAM_ENV == UPSTREAM_ENV == "METACOLLAPSE_OMNIGLOT_UPSTREAM"


def test_default_source_is_the_pinned_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No variable set: the official URL and md5 pins. The URL is made unreachable so no network is used.
    url = f"http://127.0.0.1:{_closed_port()}/python/"
    monkeypatch.setattr(download, "UPSTREAM_URL", url)
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw")
    msg = str(err.value)
    assert f"{url}images_background.zip" in msg and f"md5 {download.UPSTREAM_MD5['images_background.zip']}" in msg
    assert list_files(tmp_path / "raw") == []
    # Without network, the fix: a mirror through the config key or the variable, and how to make one.
    assert "`omniglot_mirror`" in msg and "$METACOLLAPSE_OMNIGLOT_MIRROR" in msg and "metacollapse make-mirror" in msg


def test_upstream_override_with_md5sums(fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    for path in fake.zips:
        (upstream / path.name).write_bytes(path.read_bytes())
    _write_md5sums(upstream, fake.zips)
    monkeypatch.setenv(UPSTREAM_ENV, upstream.as_uri())
    out = tmp_path / "raw"
    assert download_omniglot(out) == [out / name for name in ZIP_NAMES]
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}

    # The md5s come from the override's MD5SUMS: a wrong entry there is a mismatch naming both digests.
    (upstream / "MD5SUMS").write_text(f"{'0' * 32}  {ZIP_NAMES[0]}\n{hash_file(fake.zips[1], 'md5')}  {ZIP_NAMES[1]}\n")
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw2")
    msg = str(err.value)
    assert "checksum mismatch" in msg and "images_background.zip" in msg and "md5" in msg and "0" * 32 in msg
    assert hash_file(fake.zips[0], "md5") in msg
    assert list_files(tmp_path / "raw2") == []


def test_upstream_override_needs_md5sums(fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, str(fake.mirror))  # has SHA256SUMS but no MD5SUMS
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw")
    msg = str(err.value)
    assert "MD5SUMS" in msg and UPSTREAM_ENV in msg and str(fake.mirror) in msg
    assert list_files(tmp_path / "raw") == []

    # An entry that is not an md5 (here a sha256) is refused before anything is downloaded.
    (fake.mirror / "MD5SUMS").write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in fake.zips))
    with pytest.raises(DataError, match=r"images_background\.zip has 64 hex digits, expected 32 for md5"):
        download_omniglot(tmp_path / "raw")
    assert list_files(tmp_path / "raw") == []


@pytest.mark.parametrize("argument", [None, ""])
def test_mirror_from_the_environment(
    fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argument: str | None
) -> None:
    monkeypatch.setenv(UPSTREAM_ENV, str(tmp_path / "no-upstream"))  # fails at once if the mirror is ignored
    monkeypatch.setenv(MIRROR_ENV, str(fake.mirror))
    out = tmp_path / "raw"
    assert download_omniglot(out, argument) == [out / name for name in ZIP_NAMES]
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}


def test_mirror_argument_wins_over_the_environment(
    fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-such-mirror"))
    out = tmp_path / "raw"
    download_omniglot(out, str(fake.mirror))
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}


def test_empty_mirror_variable_means_upstream(
    fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_md5sums(fake.mirror, fake.zips)
    monkeypatch.setenv(UPSTREAM_ENV, str(fake.mirror))
    monkeypatch.setenv(MIRROR_ENV, "")
    (fake.mirror / "SHA256SUMS").unlink()  # would be needed if "" were taken as a mirror
    out = tmp_path / "raw"
    download_omniglot(out)
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}


def test_finished_out_dir_survives_a_changed_or_omitted_mirror(
    fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    download_omniglot(out, str(fake.mirror))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    # The upstream publishes md5s that the finished zips match but serves no zips: any download would fail.
    upstream = tmp_path / "upstream"
    _write_md5sums(upstream, fake.zips)
    monkeypatch.setenv(UPSTREAM_ENV, str(upstream))
    for path in fake.zips:
        path.unlink()
    # Another mirror whose checksums list other files (and which serves none).
    other = tmp_path / "other-mirror"
    other.mkdir()
    (other / "SHA256SUMS").write_text("".join(f"{'ab' * 32}  {name}\n" for name in ZIP_NAMES))

    assert download_omniglot(out) == [out / name for name in ZIP_NAMES]  # mirror omitted: upstream md5 match
    monkeypatch.setenv(MIRROR_ENV, str(fake.mirror))  # the old mirror, through the variable
    assert download_omniglot(out) == [out / name for name in ZIP_NAMES]
    # Known to neither source: it would be replaced once a new copy verified, but none can be fetched ...
    with pytest.raises(DataError, match=r"cannot download images_background\.zip .* left as it was"):
        download_omniglot(out, str(other))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert after == before  # ... and it did not: nothing re-downloaded, nothing lost, nothing added


def test_present_zip_matching_nothing_is_replaced_by_the_configured_source(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    download_omniglot(out, str(fake.mirror))
    second = make_fake_omniglot(tmp_path / "second", layout={n: {"Delta": 1} for n in ZIP_NAMES})
    assert sha256_file(second.zips[0]) != sha256_file(fake.zips[0])
    download_omniglot(out, str(second.mirror))
    assert _snapshot(out) == {p.name: p.read_bytes() for p in second.zips}


def test_unverified_files_lists_a_zip_that_only_a_bad_mirror_vouched_for(
    fake: FakeOmniglot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mirror whose truncated background zip has a matching SHA256SUMS: the download accepts it.
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for path in fake.zips:
        (bad / path.name).write_bytes(path.read_bytes())
    (bad / ZIP_NAMES[0]).write_bytes(fake.zips[0].read_bytes()[:-300])
    write_sha256sums(bad, list(ZIP_NAMES))
    out = tmp_path / "raw"
    download_omniglot(out, str(bad))
    truncated = out / ZIP_NAMES[0]

    assert unverified_files(out, str(bad)) == []  # the source that vouched for it is still configured
    assert unverified_files(out, str(fake.mirror)) == [truncated]  # a good mirror knows better
    monkeypatch.setenv(MIRROR_ENV, str(fake.mirror))
    assert unverified_files(out) == [truncated]  # the mirror from the variable, as the workflow passes it
    # An unreachable source leaves only the known-good checksums, which no synthetic zip matches.
    assert unverified_files(out, str(tmp_path / "gone")) == [out / name for name in ZIP_NAMES]

    assert main(["download", "--out-dir", str(out), "--mirror", str(fake.mirror), "--list-unverified"]) == 0
    assert capsys.readouterr().out == f"{truncated}\n"
    assert truncated.read_bytes() == (bad / ZIP_NAMES[0]).read_bytes()  # listing downloads nothing

    # The workflow removes what is listed; the download then fetches it from the good mirror.
    truncated.unlink()
    download_omniglot(out)
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}
    assert unverified_files(out) == []
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        unverified_files(out, dataset="mnist")


def test_make_mirror(fake: FakeOmniglot, tmp_path: Path) -> None:
    zips = tmp_path / "zips"
    _raw_from(fake, zips)
    mirror = tmp_path / "made"
    sums = make_mirror(zips, mirror)
    assert sums == mirror / "SHA256SUMS"
    assert sums.read_text() == "".join(f"{sha256_file(zips / name)}  {name}\n" for name in ZIP_NAMES)
    assert list_files(mirror) == sorted([*ZIP_NAMES, "SHA256SUMS"])
    out = tmp_path / "raw"
    download_omniglot(out, str(mirror))
    assert _snapshot(out) == {p.name: p.read_bytes() for p in fake.zips}
    # In place: the folder of zips becomes a mirror itself.
    make_mirror(zips, zips)
    assert (zips / "SHA256SUMS").read_text() == sums.read_text()
    assert list_files(zips) == sorted([*ZIP_NAMES, "SHA256SUMS"])


def test_make_mirror_refuses_missing_or_foreign_zips(fake: FakeOmniglot, tmp_path: Path) -> None:
    zips = _raw_from(fake, tmp_path / "zips")
    (zips / ZIP_NAMES[1]).unlink()
    with pytest.raises(DataError, match=r"images_evaluation\.zip not found"):
        make_mirror(zips, tmp_path / "m1")
    build_zip(zips / ZIP_NAMES[1], [("notes/readme.txt", b"not omniglot")])
    with pytest.raises(DataError, match=r"images_evaluation\.zip: no 'top/Alphabet/characterNN/\*\.png' entries"):
        make_mirror(zips, tmp_path / "m2")
    (zips / ZIP_NAMES[1]).write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        make_mirror(zips, tmp_path / "m3")
    assert list_files(tmp_path / "m1") == list_files(tmp_path / "m2") == list_files(tmp_path / "m3") == []


def test_download_checksum_mismatch(fake: FakeOmniglot, tmp_path: Path) -> None:
    bad = "ab" * 32
    write_sha256sums(fake.mirror, [ZIP_NAMES[0]], extra={ZIP_NAMES[1]: bad})
    out = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        download_omniglot(out, str(fake.mirror))
    msg = str(err.value)
    assert "checksum mismatch" in msg and "images_evaluation.zip" in msg
    assert bad in msg and sha256_file(fake.zips[1]) in msg  # expected and actual
    assert fake.mirror.as_uri() in msg  # the source
    # The good file stays (verified), the bad one is not left behind, nor any temporary.
    assert list_files(out) == ["images_background.zip"]


def test_download_truncated_file_on_mirror(fake: FakeOmniglot, tmp_path: Path) -> None:
    good = fake.zips[0].read_bytes()
    expected = sha256_bytes(good)
    fake.zips[0].write_bytes(good[: len(good) // 2])  # SHA256SUMS still lists the full file
    out = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        download_omniglot(out, str(fake.mirror))
    msg = str(err.value)
    assert "images_background.zip" in msg and expected in msg and sha256_file(fake.zips[0]) in msg
    assert list_files(out) == []


def test_download_failure_leaves_existing_good_files_untouched(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    download_omniglot(out, str(fake.mirror))
    before = _snapshot(out)
    (out / ZIP_NAMES[1]).write_bytes(b"stale")  # forces a re-download of the evaluation zip ...
    fake.zips[1].write_bytes(b"corrupt on the mirror")  # ... which fails
    with pytest.raises(DataError, match="checksum mismatch"):
        download_omniglot(out, str(fake.mirror))
    after = _snapshot(out)
    assert after == {**before, ZIP_NAMES[1]: b"stale"}  # nothing replaced, nothing added


def test_download_missing_checksum_entry(fake: FakeOmniglot, tmp_path: Path) -> None:
    write_sha256sums(fake.mirror, [ZIP_NAMES[0]])
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw", str(fake.mirror))
    msg = str(err.value)
    assert "no checksum for images_evaluation.zip" in msg and "SHA256SUMS" in msg
    assert list_files(tmp_path / "raw") == []  # checked before anything is downloaded


def test_download_mirror_missing_zip(fake: FakeOmniglot, tmp_path: Path) -> None:
    expected = sha256_file(fake.zips[1])
    fake.zips[1].unlink()
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw", str(fake.mirror))
    msg = str(err.value)
    assert "images_evaluation.zip" in msg and expected in msg and "actual: none" in msg
    assert list_files(tmp_path / "raw") == ["images_background.zip"]


@pytest.mark.parametrize("as_url", [True, False])
def test_download_unreachable_local_mirror(tmp_path: Path, as_url: bool) -> None:
    missing = tmp_path / "no-such-mirror"
    mirror = missing.as_uri() if as_url else str(missing)
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw", mirror)
    msg = str(err.value)
    assert "SHA256SUMS" in msg and str(missing) in msg
    assert "images_background.zip" in msg  # says what it needed the checksums for
    assert "$METACOLLAPSE_OMNIGLOT_MIRROR" in msg and "`omniglot_mirror`" in msg  # where the mirror came from
    assert list_files(tmp_path / "raw") == []


def test_download_unreachable_http_mirror(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/omniglot/"
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw", url)
    msg = str(err.value)
    assert "SHA256SUMS" in msg and url in msg and "unreachable" in msg
    assert list_files(tmp_path / "raw") == []


def test_download_rejects_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported mirror"):
        download_omniglot(tmp_path / "raw", "ftp://example.invalid/omniglot")


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set[str] = set()  # paths served with a full Content-Length but only half the body

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keeps test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.path = self.path.removeprefix("/omniglot")  # the mirror's URL prefix
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.truncate:
            return super().do_GET()
        body = Path(self.directory, name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        return None


@pytest.fixture
def http_mirror(fake: FakeOmniglot) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"truncate": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(fake.mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/omniglot", handler
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_http(fake: FakeOmniglot, http_mirror: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    url, _ = http_mirror
    paths = download_omniglot(tmp_path / "raw", url)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in fake.zips]


def test_download_http_truncated_transfer(
    fake: FakeOmniglot, http_mirror: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    url, handler = http_mirror
    handler.truncate.add(ZIP_NAMES[1])
    with pytest.raises(DataError) as err:
        download_omniglot(tmp_path / "raw", url)
    msg = str(err.value)
    assert "images_evaluation.zip" in msg and f"{url}/images_evaluation.zip" in msg
    assert "truncated" in msg or "failed after" in msg
    assert sha256_file(fake.zips[1]) in msg  # the expected checksum
    assert list_files(tmp_path / "raw") == ["images_background.zip"]


def test_download_http_404(fake: FakeOmniglot, http_mirror: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    url, _ = http_mirror
    fake.zips[0].unlink()
    with pytest.raises(DataError, match=r"images_background\.zip.*HTTP 404"):
        download_omniglot(tmp_path / "raw", url)
    assert list_files(tmp_path / "raw") == []


# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def test_prepare_outputs_shapes_order_and_pixels(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    out = tmp_path / "processed"
    outputs = prepare_splits(raw, fake.splits_dir, out)
    assert outputs == {s: out / f"{s}.npy" for s in ("train", "val", "trainval", "test")}
    assert list_files(out) == sorted(f"{s}{ext}" for s in outputs for ext in (".npy", "_classes.txt"))
    for split, names in fake.splits.items():
        array, loaded_names = load_split(out, split)
        assert array.shape == (len(names), 20, 28, 28) and array.dtype == np.uint8
        assert loaded_names == names  # split-list order, not sorted
        assert (out / f"{split}_classes.txt").read_text() == "".join(f"{n}\n" for n in names)
        assert set(np.unique(array)) <= {0, 1}
        for c, name in enumerate(names):
            character, rot = name.rsplit("/", 1)
            pngs = [png for _, _, png in fake.images[character]]  # sorted by file name
            expected = np.stack([reference_image(png, int(rot[3:])) for png in pngs])
            np.testing.assert_array_equal(array[c], expected, err_msg=f"{split} {name}")


def test_prepare_rotations_and_stroke_polarity(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "processed"
    prepare_splits(_raw_from(fake, tmp_path / "raw"), fake.splits_dir, out, ["train"])
    array, names = load_split(out, "train")
    rot = {name.rsplit("/", 1)[1]: array[i] for i, name in enumerate(names) if name.startswith("Alpha/")}
    # Nearest resizing 105 -> 28 commutes with the 90-degree rotations, so the classes are exact np.rot90s
    # (counter-clockwise) of the upright class.
    for k, key in enumerate(["rot000", "rot090", "rot180", "rot270"]):
        np.testing.assert_array_equal(rot[key], np.rot90(rot["rot000"], k, axes=(1, 2)))
    # Strokes are 1: the fixed stroke block sits in the upper-left quadrant of every upright drawing
    # (rows 8-39, cols 8-29 of 105 -> about rows 2-10, cols 2-7 of 28), and moves to the lower-left after a
    # counter-clockwise quarter turn. The background (most pixels) is 0.
    assert (rot["rot000"][:, 3:10, 3:7] == 1).all()
    assert (rot["rot090"][:, 21:25, 3:10] == 1).all()
    assert (rot["rot000"][:, 14:, 14:].mean()) < 0.2
    assert 0.03 < array.mean() < 0.5
    # Images follow file-name order, and differ between drawers.
    upright = rot["rot000"]
    assert all(not np.array_equal(upright[0], upright[i]) for i in range(1, 20))


def test_prepare_is_byte_deterministic(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    prepare_splits(raw, fake.splits_dir, tmp_path / "a")
    prepare_splits(raw, fake.splits_dir, tmp_path / "b")
    first = _snapshot(tmp_path / "a")
    assert first == _snapshot(tmp_path / "b")
    prepare_splits(raw, fake.splits_dir, tmp_path / "a")  # rerun over existing outputs
    assert _snapshot(tmp_path / "a") == first


def test_prepare_subset_of_splits(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "processed"
    assert prepare_splits(_raw_from(fake, tmp_path / "raw"), fake.splits_dir, out, ("test",)) == {
        "test": out / "test.npy"
    }
    assert list_files(out) == ["test.npy", "test_classes.txt"]


def _assert_fails_cleanly(raw: Path, splits_dir: Path, out: Path, *needles: str) -> str:
    """prepare_splits raises DataError mentioning every needle, and the output folder is left as it was."""
    before = _snapshot(out)
    with pytest.raises(DataError) as err:
        prepare_splits(raw, splits_dir, out)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert _snapshot(out) == before
    return msg


def test_prepare_missing_character(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    splits = {**DEFAULT_SPLITS, "test": [*DEFAULT_SPLITS["test"], "Alpha/character07/rot090"]}
    write_split_lists(fake.splits_dir, splits)
    _assert_fails_cleanly(
        raw,
        fake.splits_dir,
        tmp_path / "processed",
        "missing character",
        "Alpha/character07/rot090",
        "test.txt",
        "images_background.zip",
        "images_evaluation.zip",
    )


def test_prepare_missing_alphabet(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    write_split_lists(fake.splits_dir, {**DEFAULT_SPLITS, "val": ["Delta/character01/rot000"]})
    _assert_fails_cleanly(
        raw, fake.splits_dir, tmp_path / "processed", "missing character", "Delta/character01", "val.txt"
    )


def test_prepare_wrong_image_count(tmp_path: Path) -> None:
    fake = make_fake_omniglot(tmp_path / "fake", images_per_character={"Gamma/character01": 19})
    raw = _raw_from(fake, tmp_path / "raw")
    _assert_fails_cleanly(
        raw,
        fake.splits_dir,
        tmp_path / "processed",
        "images_evaluation.zip",
        "Gamma/character01",
        "19 images",
        "expected 20",
    )


def test_prepare_wrong_image_size(tmp_path: Path) -> None:
    small = png_bytes(fake_glyph(7, size=105)[:, :104])
    fake = make_fake_omniglot(tmp_path / "fake", overrides={("Alpha/character02", 4): small})
    raw = _raw_from(fake, tmp_path / "raw")
    entry = fake.images["Alpha/character02"][4][1]
    _assert_fails_cleanly(
        raw,
        fake.splits_dir,
        tmp_path / "processed",
        "images_background.zip",
        entry,
        "Alpha/character02",
        "104x105",
        "expected 105x105",
    )


def test_prepare_not_one_bit_image(tmp_path: Path) -> None:
    grey = png_bytes(np.full((105, 105), 200, dtype=np.uint8))
    fake = make_fake_omniglot(tmp_path / "fake", overrides={("Gamma/character01", 0): grey})
    _assert_fails_cleanly(
        _raw_from(fake, tmp_path / "raw"),
        fake.splits_dir,
        tmp_path / "processed",
        fake.images["Gamma/character01"][0][1],
        "mode 'L'",
    )


def test_prepare_undecodable_image(tmp_path: Path) -> None:
    fake = make_fake_omniglot(tmp_path / "fake", overrides={("Gamma/character01", 3): b"\x89PNG\r\n\x1a\nxx"})
    _assert_fails_cleanly(
        _raw_from(fake, tmp_path / "raw"),
        fake.splits_dir,
        tmp_path / "processed",
        "images_evaluation.zip",
        fake.images["Gamma/character01"][3][1],
        "cannot decode",
    )


def test_prepare_truncated_zip_says_how_to_fetch_it_again(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    zip_path = raw / "images_evaluation.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:-300])  # cuts into the central directory
    _assert_fails_cleanly(
        raw,
        fake.splits_dir,
        tmp_path / "processed",
        str(zip_path),
        "not a readable zip",
        "snakemake --cores all --forcerun download`",
        "`omniglot_mirror`",
        "$METACOLLAPSE_OMNIGLOT_MIRROR",
    )


def test_prepare_not_a_zip(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    (raw / "images_background.zip").write_bytes(b"this is not a zip file" * 100)
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", "images_background.zip", "not a readable zip")


def test_prepare_corrupt_entry(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    zip_path = raw / "images_background.zip"
    _, entry, png = fake.images["Alpha/character01"][5]
    blob = bytearray(zip_path.read_bytes())
    at = blob.index(png)  # stored, so the PNG bytes appear verbatim; damage them without changing the length
    blob[at + len(png) // 2] ^= 0xFF
    zip_path.write_bytes(bytes(blob))
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", str(zip_path), entry, "CRC")


def test_prepare_missing_raw_zip(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    (raw / "images_evaluation.zip").unlink()
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", "images_evaluation.zip", "not found")


def test_prepare_split_list_checksum_mismatch(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    val = fake.splits_dir / "val.txt"
    expected = sha256_file(val)
    val.write_text("Alpha/character02/rot000\n")
    _assert_fails_cleanly(
        raw, fake.splits_dir, tmp_path / "processed", "checksum mismatch", str(val), expected, sha256_file(val)
    )


def test_prepare_split_list_without_checksum(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    write_sha256sums(fake.splits_dir, ["train.txt", "val.txt", "trainval.txt"])
    _assert_fails_cleanly(
        raw, fake.splits_dir, tmp_path / "processed", "test.txt", "no entry", sha256_file(fake.splits_dir / "test.txt")
    )
    (fake.splits_dir / "SHA256SUMS").unlink()
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", "SHA256SUMS", "not found")


def test_prepare_malformed_and_duplicate_classes(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    write_split_lists(fake.splits_dir, {**DEFAULT_SPLITS, "val": ["Alpha/character01/rot045"]})
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", "val.txt", "line 1", "rot045")
    write_split_lists(fake.splits_dir, {**DEFAULT_SPLITS, "val": ["Alpha/character01/rot000"] * 2})
    _assert_fails_cleanly(raw, fake.splits_dir, tmp_path / "processed", "val.txt", "line 2", "twice")


def test_prepare_error_keeps_previous_outputs(fake: FakeOmniglot, tmp_path: Path) -> None:
    raw = _raw_from(fake, tmp_path / "raw")
    out = tmp_path / "processed"
    prepare_splits(raw, fake.splits_dir, out)
    (raw / "images_evaluation.zip").write_bytes(b"broken")
    _assert_fails_cleanly(raw, fake.splits_dir, out, "images_evaluation.zip")  # snapshot compared inside


def test_prepare_unknown_split(fake: FakeOmniglot, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holdout\.txt not found"):
        prepare_splits(_raw_from(fake, tmp_path / "raw"), fake.splits_dir, tmp_path / "out", ["holdout"])


# ----------------------------------------------------------------------------------------------------------
# load_split / data_info
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def processed(fake: FakeOmniglot, tmp_path: Path) -> Path:
    out = tmp_path / "processed"
    prepare_splits(_raw_from(fake, tmp_path / "raw"), fake.splits_dir, out)
    return out


def test_data_info(processed: Path) -> None:
    info = data_info(processed)
    assert json.loads(json.dumps(info)) == info  # the CLI prints it as JSON
    assert list(info) == ["train", "val", "trainval", "test"]
    for split, names in DEFAULT_SPLITS.items():
        assert info[split] == {
            "classes": len(names),
            "images_per_class": 20,
            "image_shape": [28, 28],
            "dtype": "uint8",
            "class_names_match": True,
        }


def test_data_info_ignores_temporaries_and_requires_splits(processed: Path, tmp_path: Path) -> None:
    np.save(processed / ".train.npy.123-abc.tmp.npy", np.zeros(3))
    assert list(data_info(processed)) == ["train", "val", "trainval", "test"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no"):
        data_info(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        data_info(tmp_path / "nowhere")


def test_load_split_and_data_info_reject_class_count_mismatch(processed: Path) -> None:
    classes = processed / "val_classes.txt"
    classes.write_text(classes.read_text() + "Alpha/character02/rot000\n")
    for call in (lambda: load_split(processed, "val"), lambda: data_info(processed)):
        with pytest.raises(DataError) as err:
            call()
        assert "val_classes.txt" in str(err.value) and "3 lines" in str(err.value)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((2, 20, 28, 28), dtype=np.float32), "dtype float32"),
        (np.zeros((2, 20, 28), dtype=np.uint8), "shape (2, 20, 28)"),
        (np.zeros((2, 20, 27, 28), dtype=np.uint8), "shape (2, 20, 27, 28)"),
        (np.full((2, 20, 28, 28), 255, dtype=np.uint8), "values above 1"),
    ],
)
def test_load_split_rejects_bad_arrays(processed: Path, array: np.ndarray, needle: str) -> None:
    np.save(processed / "val.npy", array)
    with pytest.raises(DataError) as err:
        load_split(processed, "val")
    assert "val.npy" in str(err.value) and needle in str(err.value)


def test_load_split_takes_the_images_per_class_from_the_data(processed: Path) -> None:
    np.save(processed / "val.npy", np.ones((2, 7, 28, 28), dtype=np.uint8))
    array, names = load_split(processed, "val")
    assert array.shape == (2, 7, 28, 28) and len(names) == 2
    assert data_info(processed)["val"]["images_per_class"] == 7


def test_grey_levels_are_allowed_only_in_fashion_splits(processed: Path) -> None:
    grey = np.arange(2 * 20 * 28 * 28, dtype=np.int64).reshape(2, 20, 28, 28).astype(np.uint8)
    np.save(processed / "fashion_test.npy", grey)
    (processed / "fashion_test_classes.txt").write_text("Bag\nAnkle boot\n")
    array, names = load_split(processed, "fashion_test")
    np.testing.assert_array_equal(array, grey)
    assert names == ["Bag", "Ankle boot"]
    assert list(data_info(processed)) == ["train", "val", "trainval", "test", "fashion_test"]
    np.save(processed / "val.npy", grey)  # the same array in an Omniglot split
    with pytest.raises(DataError, match=r"val\.npy has values above 1"):
        load_split(processed, "val")
    (processed / "fashion_test_classes.txt").write_text("Bag\nBag\n")
    with pytest.raises(DataError, match=r"fashion_test_classes\.txt lists some class more than once"):
        load_split(processed, "fashion_test")


def test_pixel_scale_maps_each_dataset_to_the_unit_interval() -> None:
    assert [pixel_scale(s) for s in ("train", "val", "trainval", "test")] == [1.0] * 4
    assert pixel_scale("fashion_train") == pixel_scale("fashion_test") == 1 / 255
    assert np.float32(255) * np.float32(pixel_scale("fashion_train")) == np.float32(1.0)


def test_load_split_missing_files(processed: Path) -> None:
    with pytest.raises(DataError, match=r"holdout\.npy not found"):
        load_split(processed, "holdout")
    (processed / "test_classes.txt").unlink()
    with pytest.raises(DataError, match=r"test_classes\.txt not found"):
        load_split(processed, "test")
    (processed / "val.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"val\.npy is not a readable"):
        load_split(processed, "val")


def test_load_split_mmap(processed: Path) -> None:
    eager, names = load_split(processed, "trainval")
    mapped, mapped_names = load_split(processed, "trainval", mmap=True)
    assert isinstance(mapped, np.memmap) and names == mapped_names
    np.testing.assert_array_equal(eager, mapped)
    del mapped
    assert os.path.getsize(processed / "trainval.npy") > eager.nbytes


def test_a_truncated_processed_split_says_how_to_remake_it(fake: FakeOmniglot, tmp_path: Path) -> None:
    out = tmp_path / "processed"
    prepare_splits(_raw_from(fake, tmp_path / "raw"), fake.splits_dir, out, ["train"])
    npy = out / "train.npy"
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train\.npy.*snakemake --cores all --forcerun prepare"):
        load_split(out, "train")
