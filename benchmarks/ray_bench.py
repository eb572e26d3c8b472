"""`r21d bench ray`: what scoring through Ray costs on one machine, and how it scales with the
CPUs given to each decode task.

The same videos and model are scored by the local engine (``score_videos``: its decode
processes and batching) and by the Ray engine on a local cluster started for the benchmark
(``RayEngine``: decode tasks, one model actor), each run timed from the first video submitted
to the last result back. A Ray run includes what every ``r21d score --ray`` pays: building
the dataset, starting the model actor and loading the model into it. The ratio of videos/s
(Ray over local) is Ray's overhead on one machine; the decode-CPU sweep shows how many decode
tasks run at once (``CPUs left after the model actor / decode CPUs``) changes it. Both engines'
top-1 labels are compared, as a check that they scored the same thing.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.report import Report, bar_plot, markdown_table
from r21d.errors import BadOptionError


@dataclass
class RaySettings:
    device: str = "cpu"
    num_clips: int = 10
    videos: int = 4  # videos per run (the clip set repeated to this many)
    decode_cpus: tuple[float, ...] = (1.0, 0.5, 0.25)

    def as_dict(self) -> dict:
        return asdict(self)


def _timed(score) -> tuple[float, list]:
    start = time.perf_counter()
    results = list(score())
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{failed[0].path}: {failed[0].error}")
    return seconds, results


def _times(seconds: float, results, videos: int) -> dict:
    """A run's wall time and videos/s, and the model and decode seconds its results add up
    to (where the time went)."""
    return {
        "seconds": seconds,
        "videos_per_s": videos / seconds,
        "model_s": sum(r.model_s for r in results),
        "decode_s": sum(r.decode_s for r in results),
    }


def _top1(results) -> dict[str, int]:
    return {r.path + f"#{r.index}": int(r.probs.argmax()) for r in results}


def run_ray_bench(model: BenchModel, videos: list[Path], settings: RaySettings) -> Report:
    """Local engine against the Ray engine on a local cluster; see the module docstring."""
    from r21d.infer.engine import ScoreOptions, score_videos
    from r21d.infer.ray_engine import RayEngine, RayOptions
    from r21d.infer.runtime import RuntimeOptions
    from r21d.optional import import_optional

    if not videos:
        raise BadOptionError("no videos to score")
    paths = [str(videos[i % len(videos)]) for i in range(settings.videos)]
    options = ScoreOptions(num_clips=settings.num_clips)
    runtime = RuntimeOptions(device=settings.device)
    backend = runtime.open(model.checkpoint)

    def local_run(when: str) -> tuple[dict, list]:
        seconds, results = _timed(lambda: score_videos(paths, backend, options, runtime))
        row = {"engine": f"local ({when})", "decode": f"{runtime.workers} processes"}
        row["concurrent_decodes"] = runtime.workers
        return {**row, **_times(seconds, results, len(paths))}, results

    first, local_results = local_run("before")
    ray = import_optional("ray")
    rows = [first]
    own_cluster = not ray.is_initialized()  # else: the caller's cluster, left running
    start = time.perf_counter()
    if own_cluster:
        ray.init("local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    cluster_start_s = time.perf_counter() - start
    cpus = int(ray.cluster_resources().get("CPU", 1))
    try:
        for decode_cpus in settings.decode_cpus:
            # the actor's model runs as many threads as the local engine's (torch's default)
            threads = runtime.replace(threads=torch.get_num_threads())
            engine = RayEngine(model.checkpoint, threads, RayOptions(decode_cpus=decode_cpus))
            seconds, results = _timed(lambda e=engine: e.score_videos(paths, options))
            agree = _top1(results).items() & _top1(local_results).items()
            rows.append(
                {
                    "engine": "ray",
                    "decode": f"tasks of {decode_cpus:g} CPU",
                    "concurrent_decodes": int((cpus - RayOptions().cpus_per_actor) / decode_cpus),
                    **_times(seconds, results, len(paths)),
                    "top1_agree": len(agree),
                }
            )
    finally:
        if own_cluster:
            ray.shutdown()
    last, _ = local_run("after")
    rows.append(last)
    local_s = (first["seconds"] + last["seconds"]) / 2  # the machine's load drifts
    for row in rows:
        row["vs_local"] = local_s / row["seconds"]
        row.setdefault("top1_agree", len(paths))

    ray_rows = [r for r in rows if r["engine"] == "ray"]
    best = max(ray_rows, key=lambda r: r["videos_per_s"])
    report = Report(
        name="ray",
        title="Ray engine on one machine against the local engine",
        settings={
            **settings.as_dict(),
            "model": model.key,
            "videos_used": [Path(v).name for v in videos],
            "cluster_cpus": cpus,
            "ray": ray.__version__,
        },
        rows=rows,
        summary={
            "local_videos_per_s": len(paths) / local_s,
            "ray_videos_per_s": {r["decode"]: r["videos_per_s"] for r in ray_rows},
            "best_ratio": best["vs_local"],
            "best_decode": best["decode"],
            "cluster_start_s": cluster_start_s,
            "top1_agree_all": all(r["top1_agree"] == len(paths) for r in rows),
        },
    )
    columns = [
        ("engine", "engine"),
        ("decode", "decode"),
        ("concurrent_decodes", "decodes at once"),
        ("seconds", "run s"),
        ("videos_per_s", "videos/s"),
        ("model_s", "model s (sum)"),
        ("decode_s", "decode s (sum)"),
        ("vs_local", "x local"),
        ("top1_agree", f"top-1 agrees (of {len(paths)})"),
    ]
    report.add_section(
        "Throughput",
        markdown_table(rows, columns)
        + f"\n\n{len(paths)} videos x {settings.num_clips} clips, {model.key}, torch fp32 on "
        f"{settings.device}. One Ray model actor (1 CPU reserved, {torch.get_num_threads()} torch "
        "threads, as many as the local engine's model in its main process) with decode tasks, "
        "against the local engine with its decode processes, timed before and after the Ray "
        "runs (x local: against the mean of the two). Starting the local cluster "
        f"({cpus} CPUs) took {cluster_start_s:.1f} s (not in the run times); each Ray run "
        "includes starting the model actor and loading the model.",
    )
    return report


def add_plots(report: Report, out: Path) -> None:
    labels = [f"{r['engine']}: {r['decode']}" for r in report.rows]
    report.plots.append(
        bar_plot(
            out / "ray_throughput.png",
            labels,
            [r["videos_per_s"] for r in report.rows],
            xlabel="videos/s",
            title="Local engine vs Ray on one machine",
            reference=(report.summary["local_videos_per_s"], "local engine (mean)"),
        )
    )
