"""``r21d score --ray`` / ``extract --ray`` and ``score_dataset`` on real Ray clusters.

One local cluster (``ray.init(num_cpus=2)``) serves the whole test session; the two-node test
starts its own cluster of two raylets on 127.0.0.1 (``ray start --head`` and ``ray start
--address``) and kills one of them mid-run. Token authentication is off for these loopback
clusters (``RAY_AUTH_MODE=disabled``), so drivers in subprocesses can join them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_video

from r21d.checkpoint import save_checkpoint
from r21d.cli import main
from r21d.infer.engine import ScoreOptions
from r21d.infer.ray_engine import LOST_MESSAGE, RayOptions, parse_actors

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install r21d[ray])")
pytestmark = pytest.mark.ray  # run in a pytest process of their own (see pyproject.toml)

REPO = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
IDLE_OR_AGENT = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
REAL_CLIPS = ("filling_eyebrows.avi", "rotated_90_3frames.mov", "unordered_4frames.mov")


@pytest.fixture(scope="session")
def ray_address():
    """The session's local Ray cluster (2 CPUs); its GCS address for subprocess drivers."""
    saved = {k: os.environ.get(k) for k in NO_AUTH}
    os.environ.update(NO_AUTH)
    # "local": a new cluster, whatever RAY_ADDRESS or a `ray start` on this machine says
    ray.init("local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory) -> Path:
    model, spec = tiny_model
    return save_checkpoint(model, spec, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _video(path: Path, frames: int = 24, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, size=(160, 120), pattern="moving_square", seed=seed)
    return str(path)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, shared_videos) -> Path:
    """Synthetic videos (one shorter than a clip), real clips (linked, not copied), the real
    broken file and two broken files of our own."""
    folder = tmp_path_factory.mktemp("mixed")
    _video(folder / "a.mp4")
    _video(folder / "sub" / "b.mkv", seed=1)
    _video(folder / "short.mp4", frames=5, seed=2)
    for name in (*REAL_CLIPS, "corrupted.mp4"):
        (folder / name).symlink_to(shared_videos / name)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.avi").write_text("not a video at all")
    return folder


def _jsonl(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a video was recorded twice"
    return by_path


def _parquet(path: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    records = pq.read_table(path).to_pylist()
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a video was recorded twice"
    return by_path


def _assert_same_records(ours: dict[str, dict], theirs: dict[str, dict]) -> None:
    """Equal records but for timings; probabilities within 1e-6."""
    assert sorted(ours) == sorted(theirs)
    for path, mine in ours.items():
        other = theirs[path]
        for key in ("status", "error", "clips", "frames_decoded", "duration", "short", "model"):
            assert mine[key] == other[key], (path, key, mine[key], other[key])
        assert [(t["index"], t["label"]) for t in mine["top_k"]] == [
            (t["index"], t["label"]) for t in other["top_k"]
        ], path
        np.testing.assert_allclose(
            [t["prob"] for t in mine["top_k"]], [t["prob"] for t in other["top_k"]], atol=1e-6
        )


def test_ray_records_equal_the_local_engines_and_resume(ray_address, checkpoint, mixed_folder,
                                                        tmp_path, capsys):  # fmt: skip
    common = ["score", str(mixed_folder), "--model", str(checkpoint), "--clips", "2"]
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.parquet"
    assert main([*common, "-o", str(local), "--workers", "1"]) == 1  # broken files failed
    assert main([*common, "-o", str(on_ray), "--ray", ray_address]) == 1

    expected = _jsonl(local)
    got = _parquet(on_ray)
    _assert_same_records(got, expected)
    statuses = {Path(p).name: r["status"] for p, r in got.items()}
    assert [n for n, s in sorted(statuses.items()) if s == "error"] == [
        "corrupted.mp4", "empty.mp4", "text.avi"
    ]  # fmt: skip
    assert got[str(mixed_folder / "short.mp4")]["short"] is True
    assert got[str(mixed_folder / "a.mp4")]["model_s"] > 0
    capsys.readouterr()

    assert main([*common, "-o", str(on_ray), "--ray", ray_address]) == 0  # all recorded
    assert f"skipped {len(expected)}" in capsys.readouterr().err
    assert len(_parquet(on_ray)) == len(expected)


def test_extract_on_ray_gives_the_local_features(ray_address, checkpoint, tmp_path):
    folder = tmp_path / "in"
    videos = [_video(folder / f"{name}.mp4", seed=i) for i, name in enumerate("xy")]
    (folder / "bad.mp4").write_bytes(b"\0" * 100)
    common = ["extract", str(folder), "--model", str(checkpoint), "--clips", "2", "--crops", "3"]
    assert main([*common, "-o", str(tmp_path / "local"), "--workers", "0"]) == 1
    assert main([*common, "-o", str(tmp_path / "ray"), "--ray", ray_address]) == 1

    local, on_ray = (
        _jsonl(tmp_path / "local" / "index.jsonl"),
        _jsonl(tmp_path / "ray" / "index.jsonl"),
    )
    assert sorted(local) == sorted(on_ray)
    bad = on_ray[str(folder / "bad.mp4")]
    assert bad["status"] == "error" and bad["error"] == local[str(folder / "bad.mp4")]["error"]
    for video in videos:
        assert on_ray[video]["status"] == "ok" and on_ray[video]["clips"] == 6
        with (
            np.load(tmp_path / "local" / local[video]["file"]) as ours,
            np.load(tmp_path / "ray" / on_ray[video]["file"]) as theirs,
        ):
            np.testing.assert_allclose(theirs["clip_features"], ours["clip_features"], atol=1e-6)
            np.testing.assert_allclose(theirs["video_feature"], ours["video_feature"], atol=1e-6)


def test_score_dataset_is_a_ray_dataset_of_score_records(ray_address, checkpoint, tmp_path):
    from r21d.infer import score_dataset

    videos = [_video(tmp_path / f"v{i}.mp4", seed=i) for i in range(2)]
    gone = str(tmp_path / "gone.mp4")
    ds = score_dataset(
        [*videos, gone], checkpoint, ScoreOptions(num_clips=1), top_k=2,
        ray_options=RayOptions(model_actors=(1, 2), decode_cpus=0.5),
    )  # fmt: skip
    assert isinstance(ds, ray.data.Dataset)
    ds.write_parquet(str(tmp_path / "out"))
    records = _parquet(tmp_path / "out")
    assert sorted(records) == sorted([*videos, gone])
    for video in videos:
        record = records[video]
        assert record["status"] == "ok" and record["clips"] == 1 and len(record["top_k"]) == 2
        assert record["top_k"][0]["prob"] >= record["top_k"][1]["prob"] > 0
        assert record["model"] == "tiny.safetensors"
    assert records[gone]["status"] == "error" and "gone.mp4" in records[gone]["error"]


def test_a_killed_driver_resumes_with_one_record_per_video(ray_address, checkpoint, tmp_path):
    folder = tmp_path / "videos"
    videos = [_video(folder / f"clip{i}.mp4", seed=i) for i in range(8)]
    out = tmp_path / "results.jsonl"
    command = [
        sys.executable, "-m", "r21d", "score", str(folder), "--model", str(checkpoint),
        "-o", str(out), "--clips", "1", "--ray", ray_address,
    ]  # fmt: skip
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert _wait_for(lambda: _lines(out) >= 2 or driver.poll() is not None, 240)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            os.kill(driver.pid, signal.SIGKILL)
            assert driver.wait(timeout=60) == -signal.SIGKILL
        finally:
            if driver.poll() is None:
                driver.kill()
    with open(out, "rb") as f:  # a kill may leave half a line; resuming must cut it
        done = [json.loads(line) for line in f.read().split(b"\n")[:-1]]
    assert 2 <= len(done) < len(videos)

    assert main(["score", str(folder), "--model", str(checkpoint), "-o", str(out),
                 "--clips", "1", "--ray", ray_address]) == 0  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(videos)  # every video exactly once
    assert records[: len(done)] == done  # earlier records kept as they were


def test_score_without_ray_does_not_import_ray(checkpoint, tmp_path):
    video = _video(tmp_path / "v.mp4")
    code = (
        "import sys\nfrom r21d.cli import main\n"
        f"rc = main(['score', {video!r}, '--model', {str(checkpoint)!r}, '-o', "
        f"{str(tmp_path / 'r.jsonl')!r}, '--clips', '1', '--workers', '0'])\n"
        "assert rc == 0, rc\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)
    assert _lines(tmp_path / "r.jsonl") == 1


def test_ray_options_are_checked():
    assert parse_actors("3") == (3, 3) and parse_actors("1,4") == (1, 4)
    with pytest.raises(argparse.ArgumentTypeError, match="N or MIN,MAX"):
        parse_actors("two")
    with pytest.raises(ValueError, match="1 <= MIN <= MAX"):
        RayOptions(model_actors=(3, 1))
    with pytest.raises(ValueError, match="decode_cpus must be > 0"):
        RayOptions(decode_cpus=0)
    with pytest.raises(ValueError, match="GPUs per model actor"):
        RayOptions(gpus_per_actor=-0.5)


# -- two raylets on 127.0.0.1, one killed mid-run ------------------------------------------


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


_ISSUED_PORTS: set[int] = set()


def _free_port() -> int:
    """A free port never handed out before in this session (a port closed after the check
    is free again, and two Ray components given one port refuse to start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port


def _nodes_alive(gcs: int, env: dict) -> int:
    """Alive nodes of the cluster at ``gcs`` (0 while it cannot be reached)."""
    count = (
        f"import ray; ray.init(address='127.0.0.1:{gcs}'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", count], env=env, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return 0
    return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout else 0


def _processes(root: int) -> dict[int, str]:
    """Command lines of ``root`` and its live descendants (a Ray node: ``ray start``, its
    GCS, raylet, agents and workers, which run in process groups of their own)."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
                commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " ")
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in commands:
            found[pid] = commands[pid]
            frontier += [child for child, parent in parents.items() if parent == pid]
    return found


def _kill(processes: dict[int, str]) -> None:
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start_node(log: Path, *args: str) -> subprocess.Popen:
    """``ray start --block`` (every port distinct, so two nodes share the machine)."""
    ports = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
             "runtime-env-agent", "metrics-export")  # fmt: skip
    env = {
        **os.environ,
        **NO_AUTH,
        "RAY_health_check_period_ms": "500",  # notice the lost node within seconds
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "6",
    }
    env.pop("RAY_ADDRESS", None)
    store = str(200 * 2**20)
    command = [str(RAY_BIN), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--disable-usage-stats", "--object-store-memory", store, *args]  # fmt: skip
    for name in ports:
        command += [f"--{name}-port", str(_free_port())]
    with open(log, "w") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)


def _stop_node(node: subprocess.Popen) -> None:
    processes = _processes(node.pid)
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=30)
    _kill(processes)  # whatever did not stop


def _forget_cluster(port: int) -> None:
    """Remove the "latest cluster" note ``ray start --head`` leaves, if it names ours (a
    later ``ray.init()`` would try to join the stopped cluster)."""
    note = Path("/tmp/ray/ray_current_cluster")
    with contextlib.suppress(OSError):
        if note.read_text().strip().endswith(f":{port}"):
            note.unlink()


def _busy_workers(node: subprocess.Popen) -> list[str]:
    """Ray worker processes of a node that run a task or an actor (not ``ray::IDLE``)."""
    titles = _processes(node.pid).values()
    return [t for t in titles if t.startswith("ray::") and not t.startswith(IDLE_OR_AGENT)]


@pytest.mark.slow
def test_a_node_lost_mid_run_loses_no_video(checkpoint, tmp_path):
    folder = tmp_path / "videos"
    videos = [_video(folder / f"clip{i:02d}.mp4", frames=48, seed=i) for i in range(20)]
    out = tmp_path / "results.jsonl"
    gcs = _free_port()
    head = _start_node(tmp_path / "head.log", "--head", "--port", str(gcs), "--num-cpus", "1",
                       "--include-dashboard=false")  # fmt: skip
    second = driver = log = None
    try:
        second = _start_node(tmp_path / "second.log", "--address", f"127.0.0.1:{gcs}",
                             "--num-cpus", "2")  # fmt: skip
        env = {**os.environ, **NO_AUTH}
        env.pop("RAY_ADDRESS", None)
        joined = _wait_for(lambda: head.poll() is not None or _nodes_alive(gcs, env) == 2, 240)
        logs = (tmp_path / "head.log").read_text() + (tmp_path / "second.log").read_text()
        assert joined and head.poll() is None, logs

        command = [
            sys.executable, "-m", "r21d", "score", str(folder), "--model", str(checkpoint),
            "-o", str(out), "--clips", "4", "--ray", f"127.0.0.1:{gcs}",
            "--ray-cpus-per-actor", "0.5", "--ray-decode-cpus", "0.5",
        ]  # fmt: skip
        log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 (closed in finally)
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        working = _wait_for(lambda: _busy_workers(second) or driver.poll() is not None, 300)
        assert working and driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert _lines(out) < len(videos)  # mid-run, with work on the second node
        _kill(_processes(second.pid))  # the node's raylet, object store and workers

        assert driver.wait(timeout=420) in (0, 1), (tmp_path / "driver.log").read_text()
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["path"] for r in records) == sorted(videos)  # every video exactly once
        for record in records:  # retried by Ray, or else recorded as lost
            assert record["status"] == "ok" or record["error"] == LOST_MESSAGE, record
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        if log is not None:
            log.close()
        for node in (second, head):
            if node is not None:
                _stop_node(node)
        _forget_cluster(gcs)
