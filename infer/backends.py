"""Inference backends: torch, onnxruntime and TensorRT behind one small interface.

Every backend takes raw RGB frames ``(N, T, H, W, 3)`` uint8 and returns
``(probs (N, classes) float32, features (N, feature_dim) float32)``: the Caffe2
fully-convolutional head (softmax per position, averaged; DESIGN.md s.4), normalised from the
model's own spec, so the caller never handles mean, std or channel order.

:func:`open_backend` picks the backend from the model file (``.safetensors`` -> torch,
``.onnx`` -> onnxruntime, ``.engine``/``.plan`` -> TensorRT) and the device and precision
asked for. A GPU that was asked for and is not used is an error, never a silent CPU run:
``onnxruntime-gpu`` without a working CUDA falls back to its CPU provider with only a log line,
so the session's active providers are checked after it is created.

Every model file is checked when it opens: one probe clip that its spec says it takes runs
through the backend, and outputs that are not the spec's probabilities (another class count,
scores outside [0, 1], rows that do not sum to 1) refuse the file (:func:`check_outputs`), so
a graph carrying another export's metadata never writes a record.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from r21d.artefacts import existing_file, spec_classes
from r21d.errors import BadModelFileError, BadOptionError, RuntimeUnavailableError
from r21d.infer.runtime import RuntimeOptions, parse_device, require_device
from r21d.models.heads import check_input_shape, min_spatial_size
from r21d.spec import ModelSpec

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
SUFFIX_BACKEND = {
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
PROBS_TOLERANCE = 1e-2
"""How far a probe's probability may lie outside [0, 1], and a row's sum from 1. The head's
softmax and average stay fp32, so rows sum to 1 within float rounding in bf16 runs too (the
probe passes OpenVINO bf16 in tests/infer/test_backend_probe.py and torch bf16 on the real I3D
in tests/infer/test_real_i3d_scoring.py); the margin leaves room for a softmax run in 16 bits
(bf16's 2^-8 is ~4e-3). Logits or another model's scores miss by far more."""


class BackendError(RuntimeUnavailableError):
    """A backend that cannot run as asked (missing runtime, wrong device, unsupported mode)."""


class Backend(ABC):
    """Runs a model on batches of raw frames.

    Attributes: ``spec`` (the model's :class:`~r21d.spec.ModelSpec`), ``name`` (``torch``,
    ``onnxruntime``, ``tensorrt``), ``device`` (``cpu``, ``cuda:0``), ``precision``
    (``fp32``, ``bf16``, ``fp16``), ``fixed_batch`` (the only batch size the model accepts, or
    ``None``), ``max_batch`` (largest batch it accepts, or ``None``) and ``default_batch`` (a
    sensible batch size for this device).
    """

    name: str
    spec: ModelSpec
    device: str
    precision: str
    fixed_batch: int | None = None
    max_batch: int | None = None

    @property
    def default_batch(self) -> int:
        """Batch size used when the caller gives none.

        On CPU, fp32 convolutions run fastest one clip at a time (benchmarks/results/model.md:
        R(2+1)D-18 4.5 clips/s at batch 1, 3.5 at batch 8 on 2 cores), while bf16 gains from
        small batches (14.8 clips/s at 1, 18.6 at 4); GPUs want large batches.
        """
        if self.fixed_batch:
            return self.fixed_batch
        if self.device == "cpu" and self.spec.fixed_input:
            return self.spec.views  # a ViT takes a video's views in one call (not benchmarked)
        if self.device == "cpu":
            return 4 if self.precision == "bf16" else 1
        return 32

    def run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and pooled features for a batch of clips.

        ``frames`` is ``(N, T, H, W, 3)`` uint8 RGB; a shape the model cannot take is a
        :class:`ValueError` raised before any graph runs.
        """
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            kind = getattr(frames, "dtype", type(frames).__name__)
            raise BadOptionError(f"frames must be a uint8 numpy array (N, T, H, W, 3), got {kind}")
        check_input_shape(self.spec, frames.shape, "uint8")
        n = frames.shape[0]
        if self.fixed_batch and n != self.fixed_batch:
            raise BadOptionError(
                f"{self.name} model takes batches of exactly {self.fixed_batch} clips, got {n}"
            )
        if self.max_batch and n > self.max_batch:
            raise BadOptionError(f"{self.name} model takes at most {self.max_batch} clips, got {n}")
        probs, features = self._run(np.ascontiguousarray(frames))
        return np.asarray(probs, np.float32), np.asarray(features, np.float32)

    @abstractmethod
    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backend-specific forward pass on a validated batch."""

    def describe(self) -> str:
        """One line: backend, device, precision and model."""
        batch = f", fixed batch {self.fixed_batch}" if self.fixed_batch else ""
        return (
            f"{self.name} on {self.device} ({self.precision}{batch}): {self.spec.name}, "
            f"{self.spec.num_classes} classes, clip {self.spec.clip_len} frames"
        )


def open_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    *,
    channels_last: bool | None = None,
    ort_provider: str | None = None,
    allow_cpu_fallback: bool = False,
    threads: int | None = None,
) -> Backend:
    """Open ``model_path`` with the backend its suffix (or ``backend``) names.

    The options mean what :class:`~r21d.infer.runtime.RuntimeOptions` says (``device``
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``precision`` ``None``: the model's own;
    ``channels_last`` ``None``: on for torch). ``ort_provider`` (``cpu``, ``cuda``,
    ``tensorrt``; default from ``device``) picks the onnxruntime execution provider;
    ``allow_cpu_fallback`` turns a GPU request that ends up on the CPU from an error into a
    warning. ``threads`` sets the intra-op CPU threads.
    """
    options = RuntimeOptions(
        backend=backend,
        device=device,
        precision=precision,
        channels_last=channels_last,
        threads=threads,
        ort_provider=ort_provider,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    path = existing_file(model_path)
    if backend == "auto":
        backend = SUFFIX_BACKEND.get(path.suffix.lower())
        if backend is None:
            raise BadOptionError(
                f"cannot tell the backend from {path.name!r}: expected "
                f"{', '.join(SUFFIX_BACKEND)} (or pass --backend)"
            )
    if channels_last and backend != "torch":
        raise BadOptionError("channels_last applies to the torch backend only")
    if ort_provider is not None and backend != "onnxruntime":
        raise BadOptionError(f"an onnxruntime provider was given for the {backend} backend")
    device = parse_device(options.device)
    if backend == "torch":
        from r21d.checkpoint import load_checkpoint

        model, spec = load_checkpoint(path)
        layout = channels_last is not False
        opened: Backend = TorchBackend(model, spec, device, precision or "fp32", layout, threads)
    elif backend == "onnxruntime":
        opened = OnnxRuntimeBackend(
            path, device, precision, ort_provider, allow_cpu_fallback, threads
        )
    elif backend == "openvino":
        opened = OpenVinoBackend(path, device, precision, threads)
    else:
        opened = TensorRTBackend(path, device, precision)
    check_outputs(opened, path)
    return opened


def probe_shape(backend: Backend) -> tuple[int, int, int, int, int]:
    """The uint8 ``(N, T, H, W, 3)`` probe clip: the backend's fixed batch or 1, the spec's
    clip length and crop (at least the head's smallest frame)."""
    spec = backend.spec
    size = max(spec.crop_size, min_spatial_size(spec))
    return (backend.fixed_batch or 1, spec.clip_len, size, size, 3)


def check_outputs(backend: Backend, path: str | Path) -> None:
    """Run one probe clip (:func:`probe_shape`, random frames) and refuse ``path`` with a
    :class:`~r21d.errors.BadModelFileError` unless the backend returns the spec's
    probabilities: ``(N, classes)``, each in [0, 1] and each row summing to 1, within
    :data:`PROBS_TOLERANCE`, and ``(N, features)`` features."""
    spec = backend.spec
    kind = {"torch": "model", "tensorrt": "engine"}.get(backend.name, "graph")
    shape = probe_shape(backend)
    n = shape[0]
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    try:
        probs, features = backend.run(frames)
    except BadOptionError as e:
        raise BadModelFileError(
            f"{path}: its {kind} refuses a {'x'.join(map(str, shape[:4]))} clip, which its "
            f"r21d spec says it takes: {e}"
        ) from None
    not_its = f"the spec does not belong to this {kind}"
    if probs.ndim != 2 or probs.shape[0] != n:
        raise BadModelFileError(
            f"{path}: its {kind} outputs probabilities of shape {probs.shape} for {n} clip(s), "
            f"not ({n}, classes)"
        )
    if probs.shape[1] != spec.num_classes:
        raise BadModelFileError(
            f"{path}: its {kind} outputs {probs.shape[1]} scores per clip but its r21d spec has "
            f"{spec_classes(spec)}: {not_its}"
        )
    if features.ndim != 2 or features.shape[0] != n:
        raise BadModelFileError(
            f"{path}: its {kind} outputs features of shape {features.shape} for {n} clip(s), "
            f"not ({n}, features)"
        )
    if not np.isfinite(probs).all():
        raise BadModelFileError(
            f"{path}: its {kind} outputs non-finite scores (NaN or inf) for a probe clip: "
            "its weights are broken"
        )
    low, high = float(probs.min()), float(probs.max())
    if low < -PROBS_TOLERANCE or high > 1 + PROBS_TOLERANCE:
        raise BadModelFileError(
            f"{path}: its {kind} outputs scores from {low:.4g} to {high:.4g} for a probe clip, "
            f"not probabilities in [0, 1]: {not_its}"
        )
    sums = probs.sum(1)
    worst = float(sums[np.abs(sums - 1).argmax()])
    if abs(worst - 1) > PROBS_TOLERANCE:
        raise BadModelFileError(
            f"{path}: its {kind}'s scores for a probe clip sum to {worst:.4g}, not 1 "
            f"(tolerance {PROBS_TOLERANCE:g}): they are not the spec's probabilities"
        )


class TorchBackend(Backend):
    """A model run eagerly in PyTorch (CPU or CUDA): a ``.safetensors`` checkpoint, or a model
    in memory (training validation scores the model being trained, sharing its weights).

    ``bf16`` runs under ``torch.autocast`` (CPU or CUDA); ``fp16`` under CUDA autocast only,
    since CPU half-precision convolutions are slow or missing. The softmax head runs in fp32.
    The model is put in eval mode; a caller that trains it restores its modes afterwards.
    """

    name = "torch"

    def __init__(
        self,
        model,
        spec: ModelSpec,
        device: str,
        precision: str,
        channels_last: bool = False,
        threads: int | None = None,
    ):
        import torch

        from r21d.models.heads import FullyConvolutional

        require_device(device)
        if precision == "fp16" and device == "cpu":
            raise BackendError(
                "fp16 needs a CUDA device; on the CPU use --precision bf16 (autocast) or fp32"
            )
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self._torch = torch
        wrapped = FullyConvolutional(model, spec, input_format="uint8").to(device).eval()
        if channels_last:
            wrapped = wrapped.to(memory_format=torch.channels_last_3d)
        self._model = wrapped
        self._autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
            precision
        ]

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        device_type = "cpu" if self.device == "cpu" else "cuda"
        with torch.inference_mode():
            x = torch.from_numpy(frames)
            if device_type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            with torch.autocast(
                device_type,
                dtype=self._autocast_dtype or torch.float32,
                enabled=self._autocast_dtype is not None,
            ):
                probs, features = self._model(x)
            return probs.float().cpu().numpy(), features.float().cpu().numpy()

    def describe(self) -> str:
        layout = ", channels_last_3d" if self.channels_last else ""
        return super().describe() + layout


ORT_PRECISION_HINTS = {
    "bf16": "r21d exports fp32 and fp16 graphs only: for bf16 use --backend openvino "
    "--precision bf16 (it computes an fp32 graph in bf16 on the CPU), or the torch backend on "
    "the checkpoint (--precision bf16)",
    "fp16": "export an fp16 graph (r21d export onnx CHECKPOINT --precision fp16), or run an fp32 "
    "graph on a GPU with --ort-provider tensorrt --precision fp16",
    "fp32": "export an fp32 graph (r21d export onnx CHECKPOINT, the default)",
}
"""What to do instead, for each precision onnxruntime cannot run a graph in."""


class OnnxRuntimeBackend(Backend):
    """An ONNX model in onnxruntime: CPU, CUDA (IOBinding, heuristic cuDNN search) or TensorRT EP.

    The graph takes ``frames`` (uint8 NTHWC, normalised in-graph) or ``clips`` (float NCTHW,
    normalised here from the spec) and returns ``probs`` and ``features``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        device: str,
        precision: str | None,
        provider: str | None = None,
        allow_cpu_fallback: bool = False,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        from r21d.artefacts import read_spec

        self.spec = read_spec(path)
        provider = provider or ("cpu" if device == "cpu" else "cuda")
        if provider != "cpu" and device == "cpu":
            device = "cuda:0"
        device_id = int(device.partition(":")[2] or 0)
        providers: list = []
        if provider == "tensorrt":
            providers.append(
                (
                    "TensorrtExecutionProvider",
                    {
                        "device_id": device_id,
                        "trt_fp16_enable": precision == "fp16",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(path.parent / f".{path.stem}.trt-cache"),
                        "trt_timing_cache_enable": True,
                    },
                )
            )
        if provider in ("cuda", "tensorrt"):
            providers.append(
                (
                    "CUDAExecutionProvider",
                    {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"},
                )
            )
        providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback is checked below, not just logged
            session = ort.InferenceSession(str(path), options, providers=providers)
        active = session.get_providers()
        wanted = ORT_PROVIDERS[provider]
        if wanted not in active:
            message = (
                f"onnxruntime was asked for {wanted} but runs on {', '.join(active)} "
                f"(available in this install: {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu matching your CUDA/cuDNN, or use --device cpu"
            )
            if not allow_cpu_fallback:
                raise BackendError(message)
            warnings.warn(message + "; running on the CPU as allowed", stacklevel=2)
            provider, device = "cpu", "cpu"
        self.provider = provider
        self.device = device
        self._session = session
        self._device_id = device_id
        meta = session.get_modelmeta().custom_metadata_map
        graph_precision = meta.get("r21d.precision", "fp32")
        if provider == "tensorrt" and precision == "fp16":
            graph_precision = "fp16"  # the TensorRT EP builds an fp16 engine from the fp32 graph
        if precision is not None and precision != graph_precision:
            raise BackendError(
                f"{path} is an {graph_precision} graph and onnxruntime runs a graph in its own "
                f"precision; {ORT_PRECISION_HINTS[precision]}"
            )
        self.precision = graph_precision
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name not in ("frames", "clips"):
            raise BackendError(
                f"{path}: expected one input named 'frames' or 'clips', got "
                f"{[i.name for i in inputs]} (was it exported by r21d?)"
            )
        self._input = inputs[0].name
        outputs = [o.name for o in session.get_outputs()]
        if outputs[:2] != ["probs", "features"]:
            raise BackendError(f"{path}: expected outputs 'probs', 'features', got {outputs}")
        batch_dim = inputs[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self._static_dims = inputs[0].shape
        if self._input == "clips":
            self._mean = np.asarray(self.spec.mean, np.float32)
            self._std = np.asarray(self.spec.std, np.float32)

    def _feed(self, frames: np.ndarray) -> np.ndarray:
        if self._input == "frames":
            expected = self._static_dims
            given = frames.shape
        else:
            frames = ((frames.astype(np.float32) - self._mean) / self._std).transpose(0, 4, 1, 2, 3)
            expected = self._static_dims
            given = frames.shape
            frames = np.ascontiguousarray(frames)
        for want, got in zip(expected, given, strict=True):
            if isinstance(want, int) and want != got:
                raise BadOptionError(
                    f"this ONNX graph has a static input shape {expected}; got {given} "
                    "(export with dynamic shapes to score other sizes)"
                )
        return frames

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._feed(frames)
        if self.provider == "cpu":
            probs, features = self._session.run(["probs", "features"], {self._input: x})[:2]
            return probs, features
        import onnxruntime as ort

        binding = self._session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self._device_id)
        binding.bind_ortvalue_input(self._input, value)
        for name in ("probs", "features"):
            binding.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        probs, features = binding.copy_outputs_to_cpu()[:2]
        return probs, features

    def describe(self) -> str:
        return super().describe() + f", provider {ORT_PROVIDERS[self.provider]}"


class TensorRTBackend(Backend):
    """A serialised TensorRT engine (TensorRT 10/11 API) with its ``<engine>.json`` record.

    The record (:mod:`r21d.export.tensorrt`) holds the spec and the precision and is checked
    against the engine's hash. Buffers are torch CUDA tensors (no pycuda); inputs are set with
    ``set_input_shape`` and ``set_tensor_address`` and run with ``execute_async_v3`` on torch's
    current stream. The engine's optimisation profile bounds the batch size (one fixed size
    when min == max).
    """

    name = "tensorrt"

    def __init__(self, path: Path, device: str, precision: str | None):
        from r21d.artefacts import read_engine_record
        from r21d.optional import import_optional

        trt = import_optional("tensorrt")  # one line, saying how to install it
        import torch

        if device == "cpu":
            device = "cuda:0"
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU and a CUDA build of torch")
        record = read_engine_record(path)
        self.spec = ModelSpec.from_dict(record["spec"])
        self.device = device
        self.precision = record.get("precision", "fp32")
        if precision is not None and precision != self.precision:
            instead = (
                "r21d builds fp32 and fp16 engines only: for bf16 use the torch backend on the "
                "checkpoint (--precision bf16)"
                if precision == "bf16"
                else f"build an {precision} engine (r21d export trt --precision {precision})"
            )
            raise BackendError(
                f"{path} was built for {self.precision} and a TensorRT engine runs in the "
                f"precision it was built with; {instead}"
            )
        self._torch = torch
        self._trt = trt
        torch.cuda.set_device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(
                f"{path}: TensorRT {trt.__version__} could not load this engine (engines only run "
                "on the TensorRT version and GPU that built them; rebuild it here)"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or inputs[0] not in ("frames", "clips"):
            raise BackendError(f"{path}: expected one input 'frames' or 'clips', got {inputs}")
        self._input = inputs[0]
        self._outputs = [n for n in names if n not in inputs]
        if not {"probs", "features"} <= set(self._outputs):
            raise BackendError(f"{path}: expected outputs 'probs', 'features', got {names}")
        classes = tuple(engine.get_tensor_shape("probs"))[-1]  # -1: a dynamic dimension
        if classes not in (-1, self.spec.num_classes):
            raise BadModelFileError(
                f"{path}: its engine outputs {classes} scores per clip but its r21d spec has "
                f"{spec_classes(self.spec)}: the record does not belong to this engine"
            )
        low, opt, high = engine.get_tensor_profile_shape(self._input, 0)
        self.max_batch = int(high[0])
        self.fixed_batch = int(high[0]) if low[0] == high[0] else None
        self._batch_min, self._batch_opt = int(low[0]), int(opt[0])
        if self._input == "clips":
            self._mean = torch.tensor(self.spec.mean, device=device)
            self._std = torch.tensor(self.spec.std, device=device)

    @property
    def default_batch(self) -> int:
        return self.fixed_batch or self._batch_opt

    def _torch_dtype(self, name: str):
        trt, torch = self._trt, self._torch
        table = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.UINT8: torch.uint8,
            trt.DataType.INT32: torch.int32,
        }
        if hasattr(trt.DataType, "BF16"):
            table[trt.DataType.BF16] = torch.bfloat16
        return table[self._engine.get_tensor_dtype(name)]

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(frames)
        if n < self._batch_min:  # below the profile: pad with copies, drop their outputs
            frames = np.concatenate([frames, np.repeat(frames[-1:], self._batch_min - n, 0)])
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(frames).pin_memory().to(self.device, non_blocking=True)
            if self._input == "clips":
                x = ((x.float() - self._mean) / self._std).permute(0, 4, 1, 2, 3)
            x = x.to(self._torch_dtype(self._input)).contiguous()
            context = self._context
            if not context.set_input_shape(self._input, tuple(x.shape)):
                raise BadOptionError(
                    f"input shape {tuple(x.shape)} is outside this engine's optimisation profile "
                    f"{self._engine.get_tensor_profile_shape(self._input, 0)}"
                )
            context.set_tensor_address(self._input, x.data_ptr())
            buffers = {}
            for name in self._outputs:
                shape = tuple(context.get_tensor_shape(name))
                buffers[name] = torch.empty(
                    shape, dtype=self._torch_dtype(name), device=self.device
                )
                context.set_tensor_address(name, buffers[name].data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            stream.synchronize()
            return (
                buffers["probs"][:n].float().cpu().numpy(),
                buffers["features"][:n].float().cpu().numpy(),
            )


class OpenVinoBackend(Backend):
    """An r21d ONNX model compiled by OpenVINO for the CPU (only when asked for:
    ``--backend openvino``; ``pip install r21d[openvino]``).

    The inference precision is always set: OpenVINO computes in bf16 by itself on CPUs with
    AMX or AVX-512 BF16 unless ``INFERENCE_PRECISION_HINT`` says f32, so ``precision=None``
    means fp32 here, never OpenVINO's own choice. One stream with the latency hint, since the
    engine calls the model one batch at a time. On 2 AMX cores OpenVINO bf16 outran torch bf16
    + channels_last_3d (benchmarks/results/model.md).
    """

    name = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16"}
    """r21d precision -> OpenVINO ``INFERENCE_PRECISION_HINT`` (fp16 is not offered on CPUs)."""

    def __init__(self, path: Path, device: str, precision: str | None, threads: int | None = None):
        from r21d.artefacts import load_onnx_info
        from r21d.optional import import_optional

        ov = import_optional("openvino")  # one line, saying how to install it
        if device != "cpu":
            raise BackendError(
                f"the openvino backend runs on the CPU (OpenVINO's CPU plugin), not {device}; "
                "pass --device cpu"
            )
        precision = precision or "fp32"
        if precision not in self.HINTS:
            raise BackendError(
                f"the openvino backend computes in fp32 or bf16 on the CPU, not {precision}"
            )
        info = load_onnx_info(path)
        if info.precision != "fp32":
            raise BackendError(
                f"{path} is an {info.precision} graph; the openvino backend reads the fp32 graph "
                "and computes in the precision asked for (--precision fp32 or bf16)"
            )
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"
        ):
            raise BackendError("this CPU has no native bf16 for OpenVINO; use --precision fp32")
        config = {
            "INFERENCE_PRECISION_HINT": self.HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        applied = compiled.get_property("INFERENCE_PRECISION_HINT")
        if str(applied) != str(getattr(ov.Type, self.HINTS[precision])):
            raise BackendError(f"OpenVINO compiled in {applied}, not the {precision} asked for")
        self.spec = info.spec
        self.device = "cpu"
        self.precision = precision
        self._input_format = info.input_format
        names = [i.get_any_name() for i in compiled.inputs]
        outputs = [o.get_any_name() for o in compiled.outputs]
        if len(names) != 1 or outputs[:2] != ["probs", "features"]:
            raise BackendError(
                f"{path}: expected one input and outputs 'probs', 'features', got {names} -> "
                f"{outputs} (was it exported by r21d?)"
            )
        self._request = compiled.create_infer_request()
        if self._input_format == "float":
            self._mean = np.asarray(self.spec.mean, np.float32)
            self._std = np.asarray(self.spec.std, np.float32)

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = frames
        if self._input_format == "float":  # normalised NCTHW clips, as the graph expects
            x = np.ascontiguousarray(
                ((frames.astype(np.float32) - self._mean) / self._std).transpose(0, 4, 1, 2, 3)
            )
        self._request.infer({0: x})
        probs = self._request.get_tensor("probs").data.copy()
        features = self._request.get_tensor("features").data.copy()
        return probs, features
