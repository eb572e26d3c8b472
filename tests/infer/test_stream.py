"""``r21d stream`` on a real live source: MPEG-TS sent over UDP on 127.0.0.1 in real time.

The sender is PyAV in a thread (H.264 in MPEG-TS, paced at the frame rate); the receiver is
the real ``r21d stream`` path (a PyAV UDP input, the reader thread, a tiny random model).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from synthetic import index_frame, read_index, write_video

from r21d.cli import main
from r21d.infer.clips import window_starts
from r21d.infer.runtime import RuntimeOptions
from r21d.infer.stream import StreamOptions, WindowAssembler, run_stream

FPS = 25
SIZE = (160, 120)
IDLE_S = 2.0


class MpegTsSender(threading.Thread):
    """Sends index frames (frame i shows i) as MPEG-TS over UDP at ``FPS`` until stopped.

    ``pause_after`` frames in, it goes silent for ``pause_s`` seconds, then carries on.
    """

    def __init__(self, url: str, pause_after: int | None = None, pause_s: float = 0.0):
        super().__init__(daemon=True)
        self.url, self.pause_after, self.pause_s = url, pause_after, pause_s
        self.stop = threading.Event()
        self.sent = 0
        self.resumed_at: float | None = None

    def run(self) -> None:
        container = av.open(self.url, "w", format="mpegts")
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS // 2)}
        start = time.monotonic()
        while not self.stop.is_set():
            if self.sent == self.pause_after:
                time.sleep(self.pause_s)
                start += self.pause_s
                self.resumed_at = time.monotonic()
            image = index_frame(self.sent % 1000, SIZE)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = self.sent, Fraction(1, FPS)
            container.mux(stream.encode(frame))
            self.sent += 1
            delay = start + self.sent / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        container.mux(stream.encode(None))
        container.close()


TCP_SENDER = """
import sys, time
from fractions import Fraction
import av
from synthetic import index_frame
port, fps, size = int(sys.argv[1]), int(sys.argv[2]), (160, 120)
for first in (0, 50):  # two connections of 50 frames each, one second apart
    container = av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "12"}
    start = time.monotonic()
    for i in range(50):
        frame = av.VideoFrame.from_ndarray(index_frame(first + i, size), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        container.mux(stream.encode(frame))
        time.sleep(max(0.0, start + (i + 1) / fps - time.monotonic()))
    container.mux(stream.encode(None))
    container.close()
    time.sleep(1.0)
"""
"""A sender that serves MPEG-TS over TCP, drops the connection, then serves again. It runs as
a process: PyAV holds the GIL while it waits for a client to connect."""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_listening(port: int, kind=socket.SOCK_DGRAM, timeout: float = 30.0) -> None:
    """Return once something has bound ``port`` (our own bind then fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on udp port {port}")


@pytest.fixture
def backend(checkpoint):
    return RuntimeOptions(device="cpu", threads=1).open(checkpoint)


def test_udp_stream_windows_arrive_in_order_and_the_run_ends_after_the_sender_stops(backend):
    port = _free_udp_port()
    sender = MpegTsSender(f"udp://127.0.0.1:{port}?pkt_size=1316")
    records, sender_stopped = [], []

    def emit(record: dict) -> None:
        records.append(record)
        if len(records) == 5:
            sender.stop.set()
            sender_stopped.append(time.monotonic())

    sender.start()
    options = StreamOptions(idle_timeout=IDLE_S, smooth=2)
    summary = run_stream(f"udp://127.0.0.1:{port}", backend, options, emit)
    stopped = time.monotonic()
    sender.join()

    assert summary.reason == "idle" and summary.fps == FPS
    assert summary.stride == 4  # default: half the tiny model's 8-frame window
    assert len(records) >= 5 and summary.scored == len(records)
    starts = [r["start_s"] for r in records]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for r in records:
        assert r["start_frame"] % 4 == 0 and r["end_frame"] == r["start_frame"] + 7
        assert r["end_s"] - r["start_s"] == pytest.approx(7 / FPS, abs=2e-3)
        assert r["latency_s"] >= 0 and len(r["top_k"]) == 5 and "smoothed_top_k" in r
    # every window the source completed was scored or counted as skipped
    assert records[-1]["window"] + 1 == summary.scored + records[-1]["skipped"]
    assert summary.skipped == records[-1]["skipped"]
    assert "no frame for 2 s (--idle-timeout)" in summary.describe(IDLE_S)
    assert stopped - sender_stopped[0] < IDLE_S + 5  # it ends soon after the sender stops


def test_a_sender_paused_past_the_idle_timeout_ends_the_run_with_that_message(
    checkpoint, tmp_path, capsys
):
    port = _free_udp_port()
    pause_after = 3 * FPS
    sender = MpegTsSender(f"udp://127.0.0.1:{port}?pkt_size=1316", pause_after, pause_s=3 * IDLE_S)
    out = tmp_path / "windows.jsonl"
    args = ["stream", f"udp://127.0.0.1:{port}", "--model", str(checkpoint), "-o", str(out)]
    args += ["--idle-timeout", str(IDLE_S), "--device", "cpu", "--threads", "1"]
    exit_codes = []
    receiver = threading.Thread(target=lambda: exit_codes.append(main(args)))
    receiver.start()
    _wait_until_listening(port)
    sender.start()
    receiver.join()
    ended = time.monotonic()
    sender.stop.set()
    sender.join()

    assert exit_codes == [0]

    assert sender.resumed_at is not None and ended < sender.resumed_at  # ended in the pause
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records, "no window was scored before the pause"
    assert all(r["end_s"] < pause_after / FPS for r in records)
    err = capsys.readouterr().err
    assert "no frame for 2 s (--idle-timeout)" in err


def test_reconnect_opens_a_dropped_source_again_and_time_runs_on(backend):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tests = str(Path(__file__).resolve().parents[1])
    sender = subprocess.Popen(
        [sys.executable, "-c", TCP_SENDER, str(port), str(FPS)],
        env={**os.environ, "PYTHONPATH": tests},
    )
    try:
        _wait_until_listening(port, socket.SOCK_STREAM)
        records = []
        options = StreamOptions(idle_timeout=IDLE_S, reconnect=True)
        summary = run_stream(f"tcp://127.0.0.1:{port}", backend, options, records.append)
    finally:
        sender.kill()
        sender.wait()
    assert summary.reconnects == 1 and summary.reason == "idle"
    assert summary.frames == 100  # both connections, every frame
    starts = [r["start_s"] for r in records]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    # the second connection's frames carry on the first one's clock
    assert any(r["start_frame"] >= 50 and r["start_s"] >= 50 / FPS - 1e-3 for r in records)


def test_a_file_source_scores_every_window_without_skipping(backend, tmp_path):
    path = write_video(tmp_path / "v.mp4", 50, fps=FPS, size=SIZE)
    records = []
    summary = run_stream(path, backend, StreamOptions(stride_s=0.24), records.append)
    assert summary.reason == "ended" and summary.skipped == 0 and summary.frames == 50
    assert [r["start_frame"] for r in records] == window_starts(50, 8, 1, 6)
    assert [r["window"] for r in records] == list(range(len(records)))


def test_windows_use_the_models_frame_step_never_another(tmp_path):
    # frame_step 3, window of 4 frames (span 10), a window every 4 frames
    path = write_video(tmp_path / "index.mp4", 40, fps=FPS, size=(64, 48))
    assembler = WindowAssembler(clip_len=4, frame_step=3, stride=4)
    windows = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            window = assembler.add(
                i, float(frame.time), frame, lambda f: f.to_ndarray(format="rgb24")
            )
            if window is not None:
                windows.append(window)
    assert [w.start_frame for w in windows] == window_starts(40, 4, 3, 4)
    for w in windows:
        assert [read_index(image) for image in w.frames] == [
            w.start_frame + 3 * k for k in range(4)
        ]
        assert w.end_frame == w.start_frame + 9
        assert w.start_s == pytest.approx(w.start_frame / FPS)
    assert not assembler.wanted(1) and assembler.wanted(39)  # only sampled frames are prepared


def test_a_bad_url_is_one_clear_error(checkpoint, capsys):
    args = ["stream", "rtsp://127.0.0.1:1/camera", "--model", str(checkpoint), "--device", "cpu"]
    assert main([*args, "--idle-timeout", "3"]) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("r21d stream: error: cannot open rtsp://127.0.0.1:1/camera: ")
    assert "refused" in err[-1].lower()


def test_a_missing_capture_device_is_one_clear_error(checkpoint, capsys):
    args = ["stream", "/dev/video97", "--model", str(checkpoint), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "r21d stream: error: capture device /dev/video97 not found"
