"""Peers: runtimes a user would pick instead of r21d, run the way their documentation shows.

On an Intel CPU that runtime is OpenVINO (``pip install openvino``), reading the same ONNX
file r21d's onnxruntime backend runs: ``Core().compile_model(path, "CPU", config)``, then an
infer request per batch. The inference precision is always given (``INFERENCE_PRECISION_HINT``
f32 or bf16): left alone, OpenVINO computes in bf16 on CPUs with AMX or AVX-512 BF16, so an
unlabelled "OpenVINO" row would be a bf16 row. One stream with the latency hint and as many
threads as torch uses, so every contender gets the same cores.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from r21d.benchmarks.ceiling import precision_supported
from r21d.benchmarks.models import BenchModel
from r21d.benchmarks.variants import exported_onnx
from r21d.errors import BadOptionError

OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
"""r21d precision -> OpenVINO ``INFERENCE_PRECISION_HINT``."""


@dataclass(frozen=True)
class Peer:
    """One peer configuration: a runtime and the precision it is told to compute in."""

    runtime: str
    precision: str

    @property
    def label(self) -> str:
        """``peer:openvino:bf16``: the peer, and the precision hint it was given."""
        return f"peer:{self.runtime}:{OPENVINO_HINTS[self.precision]}"

    @property
    def backend(self) -> str:
        return f"{self.runtime} (peer)"

    channels_last = False


def openvino_config(precision: str, threads: int) -> dict[str, str]:
    """The compile-time properties every OpenVINO peer row uses (stated in the report)."""
    return {
        "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
    }


def default_peers(device: str) -> list[Peer]:
    """The peers worth timing on ``device``: OpenVINO f32 and bf16 on a CPU that has them."""
    peers = [Peer("openvino", "fp32"), Peer("openvino", "bf16")]
    return [p for p in peers if peer_available(p, device)[0]]


def parse_peers(text: str) -> list[Peer]:
    """``openvino:fp32,openvino:bf16`` (or ``none``) as peers."""
    if text.strip() == "none":
        return []
    peers = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        runtime, _, precision = part.partition(":")
        if runtime != "openvino" or precision not in OPENVINO_HINTS:
            raise BadOptionError(
                f"peer {part!r} is not openvino:fp32 or openvino:bf16 (or give none)"
            )
        peers.append(Peer(runtime, precision))
    return list(dict.fromkeys(peers))


def peer_available(peer: Peer, device: str) -> tuple[bool, str]:
    """(True, "") or (False, why not) for running ``peer`` on ``device``."""
    if device != "cpu":
        return False, "OpenVINO is measured on the CPU only"
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install openvino)"
    if not precision_supported(peer.precision, device):
        return False, f"{device} has no native {peer.precision}"
    return True, ""


class OpenVinoPeer:
    """OpenVINO on the model's exported fp32 ONNX graph, as its documentation shows it."""

    def __init__(self, model: BenchModel, precision: str, threads: int):
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(exported_onnx(model, "fp32")), "CPU", openvino_config(precision, threads)
        )
        applied = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        wanted = str(getattr(ov.Type, OPENVINO_HINTS[precision]))
        if applied != wanted:  # a hint OpenVINO ignored would mislabel every row
            raise RuntimeError(f"OpenVINO compiled in {applied}, not {wanted}")
        self._request = compiled.create_infer_request()

    def run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, T, H, W, 3)`` uint8 frames -> (probs, features)."""
        self._request.infer({0: frames})
        return (
            self._request.get_tensor("probs").data.copy(),
            self._request.get_tensor("features").data.copy(),
        )


def open_peer(model: BenchModel, peer: Peer, threads: int) -> OpenVinoPeer:
    """A runner for ``peer`` on ``model`` with ``.run(frames) -> (probs, features)``."""
    if peer.runtime != "openvino":
        raise BadOptionError(f"unknown peer runtime {peer.runtime!r}")
    return OpenVinoPeer(model, peer.precision, threads)
