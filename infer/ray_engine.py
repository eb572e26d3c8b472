"""Scoring on a Ray cluster: the local engine's results, from decoders and models spread over
many machines (``r21d score --ray``, ``r21d extract --ray``, :func:`score_dataset`).

Ray Data runs the pipeline, streaming with back-pressure (DESIGN.md s.13)::

    video paths      ray.data.from_items, one block per video (up to MAX_BLOCKS blocks)
      -> decode      Ray tasks on any node with CPUs (``--ray-decode-cpus`` each): the local
                     engine's decode stage (engine.decode_video), one row per video holding
                     its result so far and all its clips
      -> model       an actor pool (:class:`ScoreVideos`; ``--ray-model-actors N`` or
                     ``MIN,MAX``, ``--ray-gpus-per-actor``), the model loaded once per actor;
                     a batch of whole videos goes through the local engine's ClipBatcher, so
                     each video's views are averaged where its clips are together
      -> driver      iter_rows streams the finished results back as they come; the CLI writes
                     them with the local engine's record writers (same records, same resume)

The model file travels through Ray's object store: the driver reads it once (with its side
files, ``model.onnx.data`` or ``model.engine.json``) and every model actor writes it to a
local temporary folder and opens it there, so nodes need no shared file system for the model.
Videos are read by path: every node must see them at the same path (a shared or mounted file
system). r21d must be installed on every node.

When a node is lost, Ray re-runs its decode tasks elsewhere (at most DECODE_RETRIES times),
restarts its model actors and retries their batches (Ray Data's actor defaults), and rebuilds
decoded blocks lost with its object store from lineage. The driver yields every video exactly
once: a repeated result is dropped, and a video the cluster returned nothing for becomes an
error result saying so.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r21d.errors import BadOptionError, InputNotFoundError, RuntimeUnavailableError
from r21d.infer.engine import (
    ClipBatcher,
    ScoreOptions,
    VideoResult,
    clip_batch_size,
    decode_video,
)
from r21d.infer.runtime import RuntimeOptions
from r21d.spec import ModelSpec

if TYPE_CHECKING:
    from types import ModuleType

    import ray.data


__all__ = ["RayEngine", "RayOptions", "ScoreVideos", "add_ray_arguments", "score_dataset"]

DECODE_RETRIES = 3
"""Times Ray re-runs a decode task whose worker or node died (Ray Data's default is forever,
which would hang a run on a video that crashes its decoder every time)."""
MAX_BLOCKS = 10_000
"""One input block per video up to this many videos (a block is the unit Ray retries)."""
LOST_MESSAGE = "the Ray cluster returned no result for this video (its tasks failed)"


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray pipeline runs.

    ``address`` is passed to ``ray.init`` (``None``: Ray's own resolution, ``RAY_ADDRESS``
    else a local cluster started for the run). ``model_actors`` is ``(min, max)`` model actors
    (equal for a fixed pool), each with ``gpus_per_actor`` GPUs (fractions share a GPU) and
    ``cpus_per_actor`` CPUs; every decode task takes ``decode_cpus`` CPUs.
    """

    address: str | None = None
    model_actors: tuple[int, int] = (1, 1)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0

    def __post_init__(self) -> None:
        low, high = self.model_actors
        if not 1 <= low <= high:
            raise BadOptionError(
                f"model actors must be N or MIN,MAX with 1 <= MIN <= MAX, got {low},{high}"
            )
        if self.gpus_per_actor < 0:
            raise BadOptionError(f"GPUs per model actor must be >= 0, got {self.gpus_per_actor}")
        for name in ("cpus_per_actor", "decode_cpus"):
            if not getattr(self, name) > 0:
                raise BadOptionError(f"{name} must be > 0, got {getattr(self, name)}")


def parse_actors(text: str) -> tuple[int, int]:
    """``N`` or ``MIN,MAX`` -> ``(min, max)`` model actors."""
    parts = text.split(",")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX model actors, got {text!r}")
    low, high = int(parts[0]), int(parts[-1])
    return low, high


def add_ray_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``--ray`` option group of ``r21d score`` and ``r21d extract``."""
    default = RayOptions()
    group = parser.add_argument_group("Ray cluster (with --ray; needs pip install r21d[ray])")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="decode and score on a Ray cluster: ADDRESS as ray.init takes it (host:port, "
        "auto, ray://...); none: RAY_ADDRESS, else a local cluster for this run. Put it "
        "after the PATHs or write --ray=ADDRESS",
    )
    group.add_argument(
        "--ray-model-actors",
        type=parse_actors,
        default=default.model_actors,
        metavar="N|MIN,MAX",
        help="model actors, each loading the model once: N, or MIN,MAX to autoscale (default 1)",
    )
    group.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        default=default.gpus_per_actor,
        metavar="G",
        help="GPUs per model actor, fractions share a GPU (default 0: CPU actors)",
    )
    group.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=default.cpus_per_actor,
        metavar="C",
        help="CPUs per model actor (default %(default)s)",
    )
    group.add_argument(
        "--ray-decode-cpus",
        type=float,
        default=default.decode_cpus,
        metavar="C",
        help="CPUs per decode task, one video each (default %(default)s)",
    )
    return group


def ray_options_from_args(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`RayOptions` of parsed arguments, or ``None`` without ``--ray``."""
    if args.ray is None:
        return None
    return RayOptions(
        address=args.ray or None,
        model_actors=args.ray_model_actors,
        gpus_per_actor=args.ray_gpus_per_actor,
        cpus_per_actor=args.ray_cpus_per_actor,
        decode_cpus=args.ray_decode_cpus,
    )


def connect(address: str | None = None) -> ModuleType:
    """The ``ray`` module, connected to the cluster at ``address`` (``None``: Ray's own
    resolution) unless this process is connected already."""
    from r21d.optional import import_optional

    import_optional("ray")  # a one-line error saying how to install it
    import ray.data

    if not ray.is_initialized():
        try:
            ray.init(address=address)
        except ConnectionError as e:
            where = address or "RAY_ADDRESS"
            raise RuntimeUnavailableError(f"cannot reach the Ray cluster at {where}: {e}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own
    context.print_on_execution_start = False
    return ray


@dataclass(frozen=True)
class ShippedModel:
    """A model file (and its side files) in Ray's object store, as ``{name: bytes}``."""

    name: str
    files: Any  # ray.ObjectRef to {file name: bytes}

    @classmethod
    def put(cls, ray: ModuleType, path: Path) -> ShippedModel:
        """Read ``path`` and its side files (:func:`~r21d.infer.run_identity.model_files`)
        into the object store."""
        from r21d.infer.run_identity import model_files

        return cls(path.name, ray.put({p.name: p.read_bytes() for p in model_files(path)}))

    def write_to(self, folder: Path) -> Path:
        """Write the files into ``folder``; return the model file's path there."""
        import ray

        for name, data in ray.get(self.files).items():
            (folder / name).write_bytes(data)
        return folder / self.name


def decode_row(row: dict[str, Any], spec: ModelSpec, options: ScoreOptions) -> dict[str, Any]:
    """The decode stage (a Ray task): ``{"index", "path"}`` -> ``{"index", "video"}``, where
    ``video`` is the pickled ``(result so far, clips or None)`` of the video (bytes: Arrow
    stores them as they are, whatever the clips' shape)."""
    result, clips = decode_video(int(row["index"]), str(row["path"]), spec, options)
    return {"index": result.index, "video": pickle.dumps((result, clips), protocol=5)}


class ScoreVideos:
    """The model stage (one Ray actor): loads the model once, then scores batches of decoded
    videos, each one finished (the mean of its views) before its batch is returned, so a
    batch Ray retries holds no half-scored video of another batch."""

    def __init__(self, model: ShippedModel, runtime: RuntimeOptions):
        self._folder = tempfile.TemporaryDirectory(prefix="r21d-model-")
        self.backend = runtime.open(model.write_to(Path(self._folder.name)))
        self.batch_size = clip_batch_size(self.backend, runtime)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        batcher = ClipBatcher(self.backend, self.batch_size)
        finished: list[VideoResult] = []
        for video in batch["video"]:
            result, clips = pickle.loads(video)
            if clips is None or not len(clips):  # failed to decode, nothing to score
                finished.append(result)
            else:
                finished.extend(batcher.add(result, clips))
        finished.extend(batcher.flush())
        return {
            "index": [r.index for r in finished],
            "result": [pickle.dumps(r, protocol=5) for r in finished],
        }


class RayEngine:
    """A model scored on a Ray cluster, as ``r21d score --ray`` uses it in place of a backend.

    ``spec`` is read from the model file (the model itself is only loaded by the actors, so
    the driver needs neither a GPU nor the backend's runtime); ``name`` and ``precision`` are
    the backend and precision the actors run (the options', else the model file's own).
    """

    def __init__(self, model: str | Path, runtime: RuntimeOptions, ray_options: RayOptions):
        from r21d.artefacts import artefact_kind, load_onnx_info, read_engine_record, read_spec
        from r21d.infer.backends import SUFFIX_BACKEND

        self.model = Path(model)
        if not self.model.is_file():
            raise InputNotFoundError(f"model {self.model} not found")
        kind = artefact_kind(self.model)
        if kind == "onnx":
            info = load_onnx_info(self.model)
            self.spec, own = info.spec, info.precision
        else:
            self.spec = read_spec(self.model)
            own = "fp32"
            if kind == "tensorrt":
                own = read_engine_record(self.model).get("precision", "fp32")
        self.name = runtime.backend
        if self.name == "auto":
            self.name = SUFFIX_BACKEND[self.model.suffix.lower()]
        self.precision = runtime.precision or own
        self.runtime = runtime
        self.ray_options = ray_options

    def describe(self) -> str:
        """One line: the model and how the cluster runs it."""
        o = self.ray_options
        low, high = o.model_actors
        actors = str(low) if low == high else f"{low}-{high}"
        where = o.address or "RAY_ADDRESS or a local cluster"
        return (
            f"Ray ({where}): {actors} model actor(s) with {o.gpus_per_actor:g} GPU and "
            f"{o.cpus_per_actor:g} CPU each, decode tasks with {o.decode_cpus:g} CPU; "
            f"{self.runtime.backend} backend on {self.runtime.device}: {self.spec.name}, "
            f"{self.spec.num_classes} classes, clip {self.spec.clip_len} frames"
        )

    def results_dataset(self, videos: Iterable[str | Path], options: ScoreOptions | None = None):
        """The Ray Dataset of ``{"index", "result"}`` rows (``result``: a finished, pickled
        :class:`~r21d.infer.engine.VideoResult`), one per video, ``index`` its position."""
        ray = connect(self.ray_options.address)
        options = options or ScoreOptions()
        spec = self.spec.with_resize_mode(options.resize_mode)
        options = options.for_spec(spec)
        items = [{"index": i, "path": str(v)} for i, v in enumerate(videos)]
        videos_ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        with warnings.catch_warnings():
            # Ray Data 2.60 takes a task's max_retries only as a "ray_remote_args" keyword,
            # deprecated for Ray 2.64 (hence the <2.64 pin of the ray extra)
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            decoded = videos_ds.map(
                decode_row,
                fn_kwargs={"spec": spec, "options": options},
                num_cpus=self.ray_options.decode_cpus,
                max_retries=DECODE_RETRIES,
            )
        low, high = self.ray_options.model_actors
        return decoded.map_batches(
            ScoreVideos,
            fn_constructor_kwargs={
                "model": ShippedModel.put(ray, self.model),
                "runtime": self.runtime.replace(workers=0),
            },
            batch_size=self._videos_per_batch(options),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=self.ray_options.cpus_per_actor,
            num_gpus=self.ray_options.gpus_per_actor,
        )

    def _videos_per_batch(self, options: ScoreOptions) -> int:
        """Whole videos per model-actor batch: as many as fill one model call (the CPU's
        default batch is 1 clip at fp32, a GPU's 32: Backend.default_batch)."""
        clips = self.runtime.batch_size or (32 if self.ray_options.gpus_per_actor else 1)
        views = (options.num_clips or 1) * (options.crops or 1)
        return max(1, clips // views)

    def score_videos(
        self, videos: Iterable[str | Path], options: ScoreOptions | None = None
    ) -> Iterator[VideoResult]:
        """Score every video on the cluster; yield one result per video as it finishes, as
        :func:`~r21d.infer.engine.score_videos` does (the runtime's ``workers`` do not apply:
        Ray places the decode tasks)."""
        paths = [str(v) for v in videos]
        if not paths:
            return
        seen: set[int] = set()
        for row in self.results_dataset(paths, options).iter_rows():
            result = pickle.loads(row["result"])
            if result.index in seen:  # never expected; the promise is one record per video
                continue
            seen.add(result.index)
            yield result
        for index, path in enumerate(paths):
            if index not in seen:
                yield VideoResult(index, path, status="error", error=LOST_MESSAGE)


def score_dataset(
    videos: Iterable[str | Path],
    model: str | Path,
    options: ScoreOptions | None = None,
    runtime: RuntimeOptions | None = None,
    ray_options: RayOptions | None = None,
    *,
    top_k: int = 5,
) -> ray.data.Dataset:
    """A Ray Dataset of score records, one per video (the fields of ``r21d score``'s records,
    :func:`~r21d.infer.records.score_record`, in the Arrow schema of
    :func:`~r21d.infer.records.parquet_schema`), for pipelines of your own::

        ds = score_dataset(paths, "r34.onnx", ray_options=RayOptions(model_actors=(2, 8)))
        ds.write_parquet("s3://bucket/scores/")     # or ds.iter_rows(), ds.filter(...) ...

    Connects to Ray as :func:`connect` does. Unlike ``r21d score`` it neither resumes nor
    deduplicates: that is the job of whatever consumes the dataset.
    """
    engine = RayEngine(model, runtime or RuntimeOptions(), ray_options or RayOptions())
    return engine.results_dataset(videos, options).map_batches(
        _records_table,
        fn_kwargs={"spec": engine.spec, "top_k": top_k, "model": engine.model.name},
        batch_format="numpy",
        batch_size=None,
    )


def _records_table(batch: dict[str, np.ndarray], spec: ModelSpec, top_k: int, model: str):
    """Results -> a pyarrow Table of score records (one schema for every block)."""
    from r21d.infer.records import records_table, score_record

    results = (pickle.loads(r) for r in batch["result"])
    return records_table([score_record(r, spec, top_k, model) for r in results])
