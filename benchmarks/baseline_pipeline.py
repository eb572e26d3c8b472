"""The baseline: how the public PyTorch ports score a video (a readable reference script).

This is what `r21d score` is measured against (``r21d bench baseline``). It follows the
ports' way (ig65m-pytorch, VMZ ``pt/``) step by step:

1. decode EVERY frame of the video with PyAV into RGB numpy arrays;
2. pick 10 clips with evenly spaced start frames (DESIGN.md section 6);
3. per clip: to float, resize in torch (``F.interpolate`` bilinear, to 128x171 for the
   R(2+1)D models), centre crop (112x112), normalise with the spec's mean and std;
4. run the plain fp32 PyTorch model eagerly, one clip at a time;
5. average the clips' softmax outputs.

Resize size, crop, mean and std come from the checkpoint's spec, so the script is also a
correct reference for models other than R(2+1)D (e.g. I3D: short side 256, 224 crop).

Run it by hand: ``python -m r21d.benchmarks.baseline_pipeline model.safetensors video.mp4 ...``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r21d.checkpoint import load_checkpoint
from r21d.errors import BadOptionError
from r21d.spec import ModelSpec


def decode_all_frames(path: str | Path) -> np.ndarray:
    """Every frame of the first video stream as ``(N, H, W, 3)`` uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise BadOptionError(f"{path}: no video frames decoded")
    return np.stack(frames)


def clip_starts(num_frames: int, span: int, num_clips: int) -> list[int]:
    """Evenly spaced first frames: start_i = floor(i * (N - span) / (K - 1))."""
    last = max(0, num_frames - span)
    if num_clips == 1:
        return [last // 2]
    return [i * last // (num_clips - 1) for i in range(num_clips)]


def resized_size(spec: ModelSpec, height: int, width: int) -> tuple[int, int]:
    """Frame size after the spec's resize: fixed (h, w), or short side scaled, aspect kept."""
    if spec.resize_mode == "fixed":
        return spec.resize_size[0], spec.resize_size[1]
    short = spec.resize_size[0]
    if height <= width:
        return short, round(width * short / height)
    return round(height * short / width), short


def preprocess_clip(frames: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """``(L, H, W, 3)`` uint8 frames -> normalised ``(1, 3, L, crop, crop)`` float clip."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (L, 3, H, W), 0-255
    size = resized_size(spec, x.shape[2], x.shape[3])
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    crop = spec.crop_size
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, L, crop, crop)


@torch.no_grad()
def score_video(
    path: str | Path, model: nn.Module, spec: ModelSpec, num_clips: int = 10, device: str = "cpu"
) -> np.ndarray:
    """Video-level class probabilities: the mean of ``num_clips`` clips' softmax outputs
    (``model`` must already be on ``device``)."""
    frames = decode_all_frames(path)
    span = (spec.clip_len - 1) * spec.frame_step + 1
    clip_probs = []
    for start in clip_starts(len(frames), span, num_clips):
        # A video shorter than one clip repeats its last frame, as the r21d engine does.
        index = np.minimum(np.arange(start, start + span, spec.frame_step), len(frames) - 1)
        logits = model(preprocess_clip(frames[index], spec).to(device))
        clip_probs.append(F.softmax(logits, dim=1)[0])
    return torch.stack(clip_probs).mean(dim=0).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="r21d .safetensors checkpoint")
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--num-clips", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, spec = load_checkpoint(args.checkpoint, device=args.device)
    for video in args.videos:
        probs = score_video(video, model, spec, args.num_clips, args.device)
        top = int(probs.argmax())
        print(f"{video}\t{spec.label(top)}\t{probs[top]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
