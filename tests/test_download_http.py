"""``metacollapse download`` as a new user runs it: no mirror configured, the upstream reached over HTTP.

A local HTTP server (127.0.0.1, random port, in a thread) stands in for the official upstream: it serves the real
Omniglot zips (from the ``omniglot_mirror`` fixture) and an ``MD5SUMS`` for them, and
``METACOLLAPSE_OMNIGLOT_UPSTREAM`` points the real CLI, run in a subprocess, at it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omniglot_fakes import MIRROR_ENV, UPSTREAM_ENV, ZIP_NAMES, list_files

from metacollapse.atomic import hash_file

CLI = Path(sys.executable).parent / "metacollapse"


@dataclass
class Upstream:
    folder: Path  # what the server serves
    url: str  # its base URL, ending in '/'
    requests: list[str] = field(default_factory=list)  # request paths, in order


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server API
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def upstream(tmp_path: Path, omniglot_mirror: Path) -> Iterator[Upstream]:
    """The real zips (hard links when possible) and their ``MD5SUMS``, served over HTTP."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    for name in ZIP_NAMES:
        try:
            os.link(omniglot_mirror / name, folder / name)
        except OSError:
            shutil.copyfile(omniglot_mirror / name, folder / name)
    (folder / "MD5SUMS").write_text("".join(f"{hash_file(folder / n, 'md5')}  {n}\n" for n in ZIP_NAMES))
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Upstream(folder, f"http://127.0.0.1:{server.server_address[1]}/", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _download(out_dir: Path, upstream_url: str) -> subprocess.CompletedProcess:
    """``metacollapse download --out-dir OUT`` with no mirror configured and the upstream at ``upstream_url``."""
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    env[UPSTREAM_ENV] = upstream_url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"  # a configured proxy must not see the local server
    env["PATH"] = f"{CLI.parent}{os.pathsep}{env.get('PATH', '')}"
    command = ["metacollapse", "download", "--out-dir", str(out_dir)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_cli_downloads_verified_zips_from_the_upstream(upstream: Upstream, tmp_path: Path) -> None:
    assert CLI.is_file(), f"the metacollapse entry point is not installed next to {sys.executable}"
    out = tmp_path / "data" / "raw"
    result = _download(out, upstream.url)
    assert result.returncode == 0, result.stderr
    assert list_files(out) == sorted(ZIP_NAMES)  # nothing else, no temporaries
    for name in ZIP_NAMES:
        served = (upstream.folder / name).read_bytes()
        assert (out / name).read_bytes() == served
        assert hashlib.md5(served).hexdigest() in (upstream.folder / "MD5SUMS").read_text()
    assert sorted(upstream.requests) == sorted(["/MD5SUMS", *(f"/{name}" for name in ZIP_NAMES)])
    assert "md5 verified" in result.stderr

    # Run again: the finished zips are known good, so the upstream is not contacted at all.
    mtimes = [(out / name).stat().st_mtime_ns for name in ZIP_NAMES]
    upstream.requests.clear()
    again = _download(out, upstream.url)
    assert again.returncode == 0, again.stderr
    assert upstream.requests == []
    assert [(out / name).stat().st_mtime_ns for name in ZIP_NAMES] == mtimes


def test_cli_refuses_a_corrupted_zip(upstream: Upstream, tmp_path: Path) -> None:
    target = upstream.folder / ZIP_NAMES[0]
    good_md5 = hash_file(target, "md5")
    corrupted = bytearray(target.read_bytes())
    target.unlink()  # it may be a hard link to the mirror's file
    corrupted[len(corrupted) // 2] ^= 0xFF
    target.write_bytes(bytes(corrupted))
    bad_md5 = hashlib.md5(corrupted).hexdigest()

    out = tmp_path / "raw"
    result = _download(out, upstream.url)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("metacollapse download: error: checksum mismatch for images_background.zip")
    assert f"{upstream.url}images_background.zip" in error
    assert f"expected md5 {good_md5}" in error and f"actual {bad_md5}" in error
    assert list_files(out) == []  # nothing kept, no partial file


def test_missing_mirror_is_fetched_once_into_the_user_cache(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the variable or the CI mirror, the tests' mirror is the official zips, fetched once into the cache."""
    import omniglot_fakes

    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(omniglot_fakes, "REPO_ROOT", tmp_path / "clone" / "repo")  # no ../shared beside it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(UPSTREAM_ENV, upstream.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    find_mirror = omniglot_fakes.real_mirror.__wrapped__  # uncached

    mirror = find_mirror()
    assert mirror == (tmp_path / "cache" / "metacollapse" / "omniglot").resolve()
    assert list_files(mirror) == sorted([*ZIP_NAMES, "SHA256SUMS"])
    assert (mirror / "SHA256SUMS").read_text() == "".join(f"{hash_file(mirror / n)}  {n}\n" for n in ZIP_NAMES)
    assert all((mirror / n).read_bytes() == (upstream.folder / n).read_bytes() for n in ZIP_NAMES)
    upstream.requests.clear()
    assert find_mirror() == mirror
    assert upstream.requests == []  # once only

    # Nothing cached and no reachable upstream: the failure says what to do.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    monkeypatch.setenv(UPSTREAM_ENV, str(tmp_path / "no-upstream"))
    with pytest.raises(pytest.fail.Exception) as err:
        find_mirror()
    msg = str(err.value)
    assert MIRROR_ENV in msg and "SHA256SUMS" in msg and "sha256sum" in msg and "make_mirror" in msg
    assert str(tmp_path / "cache2") in msg and "MD5SUMS" in msg  # where it tried, and why it failed


def test_the_default_config_download_job_runs_as_a_user_runs_it(upstream: Upstream, tmp_path: Path) -> None:
    """`snakemake download` in a fresh workspace with the default config: no mirror anywhere, upstream over HTTP."""
    from conftest import make_workspace

    workdir = make_workspace(tmp_path / "fresh")
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    env[UPSTREAM_ENV] = upstream.url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PATH"] = f"{CLI.parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "download"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:] + (workdir / "logs" / "download.log").read_text()
    for name in ZIP_NAMES:
        assert (workdir / "data" / "raw" / name).read_bytes() == (upstream.folder / name).read_bytes()
    assert sorted(upstream.requests) == sorted(["/MD5SUMS", *(f"/{n}" for n in ZIP_NAMES)])
