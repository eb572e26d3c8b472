"""The training loop: data, model, SGD, checkpoints, validation, one or many processes.

``train(config)`` runs in every process of a ``torchrun`` launch (or alone). Each process
draws its own disjoint share of the common sample stream, computes BN statistics on its own
clips (the paper; ``sync_bn`` for SyncBatchNorm on GPU), and DistributedDataParallel averages
gradients, so all ranks hold the same weights after every step. Rank 0 logs, checkpoints and
validates.

With ``precise_bn_batches`` the BN running statistics are recomputed with the final weights
at the end (:mod:`r21d.train.precise_bn`): a short run's moving averages otherwise lag behind
the weights and the model scores far worse in eval mode than it trained.

A run folder holds ``config.yaml`` (the resolved options), ``labels.txt`` (the label map),
``metrics.jsonl``, ``checkpoints/`` (see :mod:`r21d.train.run_state`) and, at the end,
``model.safetensors``. ``config.yaml`` and ``labels.txt`` are written once, when a new run
has passed every check (:mod:`r21d.train.preflight`); a resumed run reads them and never
rewrites them. ``resume`` continues from the newest checkpoint exactly: weights, optimiser,
step, sampler position and RNG states come back, and the learning rate is a function of the
step. Ctrl-C or SIGTERM ends the session after the current step with a checkpoint
(:mod:`r21d.train.interrupt`) and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from r21d.checkpoint import model_tensors, save_checkpoint
from r21d.errors import BadOptionError, UnusableDataError
from r21d.infer.runtime import RuntimeOptions
from r21d.spec import ModelSpec
from r21d.train import distributed
from r21d.train.config import TrainConfig
from r21d.train.data import VideoSet, save_label_map
from r21d.train.dataset import TrainClips
from r21d.train.evaluate import evaluate_videos
from r21d.train.interrupt import StopRequest, ignore_ctrl_c, stop_on_signals
from r21d.train.linear_probe import linear_probe
from r21d.train.memory import check_fits
from r21d.train.metrics import MetricsLog
from r21d.train.model_setup import build_training_model, set_train_mode
from r21d.train.optim import build_optimizer
from r21d.train.precise_bn import recompute_bn_statistics
from r21d.train.preflight import FINAL_MODEL, RunPlan, check_run
from r21d.train.run_state import (
    checkpoint_paths,
    load_training_state,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from r21d.train.sampling import DistributedDrawSampler, class_power_weights
from r21d.train.schedule import lr_at, peak_lr

log = logging.getLogger(__name__)


def train(config: TrainConfig) -> Path:
    """Run (or resume) the training ``config`` describes; returns the final checkpoint path.

    A SIGINT or SIGTERM (in the main thread) ends it after the current step with a checkpoint
    ``resume`` continues from, then raises ``KeyboardInterrupt``.
    """
    plan = check_run(config)
    with stop_on_signals() as stop:
        ctx = distributed.setup(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            torch.use_deterministic_algorithms(config.deterministic or deterministic)
            return _train(config, ctx, plan, stop)
        finally:
            torch.use_deterministic_algorithms(deterministic)
            distributed.teardown(ctx)


def _train(cfg: TrainConfig, ctx: distributed.Context, plan: RunPlan, stop: StopRequest) -> Path:
    run_dir, train_set, val_set, spec = plan.run_dir, plan.train_set, plan.val_set, plan.spec
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_training_model(
        spec,
        init_from=cfg.init_from,
        inflate_from=cfg.inflate_from,
        finetune=cfg.finetune,
        drop_path=cfg.drop_path,
    )
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=ctx.is_main)

    if cfg.finetune == "linear_probe":
        _record_run(cfg, ctx, train_set)
        return _linear_probe(cfg, ctx, model, spec, train_set, val_set, metrics)

    state = _resume(run_dir, plan.resume_step, model) if cfg.resume else None
    model.to(ctx.device)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    autocast = _autocast(cfg.precision, ctx.device)
    _check_memory(cfg, ctx, model, spec, memory_format, autocast)  # before DDP's hooks
    if cfg.sync_bn:  # on CUDA (the preflight refuses it on the CPU)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _record_run(cfg, ctx, train_set)
    net = model
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    optimizer = build_optimizer(
        model,
        cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        layer_decay=cfg.layer_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    start_step, draws = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step, draws = state["step"], state["draws"]
        metrics.truncate_after(start_step)
        if ctx.is_main:
            log.info("resumed %s at step %d", run_dir, start_step)
            if state["world_size"] != ctx.world_size:
                log.warning(
                    "resuming a %d-process run with %d processes: the global batch and the "
                    "sample stream change, so this is not an exact continuation",
                    state["world_size"],
                    ctx.world_size,
                )

    def checkpoint(done: int) -> None:
        """Save the checkpoint of step ``done`` (rank 0), the others waiting for it."""
        if ctx.is_main:
            run_state = {
                "step": done,
                "draws": draws,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "world_size": ctx.world_size,
            }
            save_run_checkpoint(run_dir, done, model, spec, run_state, cfg.keep_checkpoints)
        distributed.barrier(ctx)

    loader = _loader(cfg, ctx, spec, train_set, start=draws)
    peak = peak_lr(cfg.base_lr, cfg.batch_size * ctx.world_size)
    end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    bar = tqdm(
        total=cfg.max_steps,
        initial=start_step,
        desc="train",
        disable=not (ctx.is_main and cfg.progress),
        dynamic_ncols=True,
    )
    window = _Window()
    batches = iter(loader)
    for step in range(start_step, end_step):
        if distributed.any_rank(stop.requested, ctx):  # every rank stops after the same step
            bar.close()
            if step > start_step and step % cfg.checkpoint_every:
                checkpoint(step)
            if ctx.is_main and step:
                log.warning("stopped after step %d; continue it with --resume", step)
            raise KeyboardInterrupt
        clips, targets = _next_batch(batches, cfg.train_manifest)
        draws += len(clips)
        clips = clips.to(ctx.device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(ctx.device, non_blocking=True)
        lr = lr_at(
            step,
            peak=peak,
            total_steps=cfg.max_steps,
            warmup_steps=cfg.warmup_steps,
            warmup_factor=cfg.warmup_factor,
            schedule=cfg.schedule,
            halvings=cfg.halvings,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        set_train_mode(model, cfg.finetune)
        with autocast:
            logits = net(clips)
        loss = _loss(logits.float(), targets, cfg.multi_label)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        window.add(loss.item(), _correct(logits, targets, cfg.multi_label), len(clips))

        done = step + 1
        bar.update(1)
        if done == cfg.max_steps and cfg.precise_bn_batches and cfg.finetune == "full":
            _precise_bn(cfg, ctx, model, batches, memory_format, autocast)
        if done % cfg.log_every == 0 or done == end_step:
            record = window.flush(ctx)
            record.update(step=done, lr=lr, clips_per_s=record["clips_per_s"] * ctx.world_size)
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['clip_acc']:.2f}")
        if done % cfg.checkpoint_every == 0 or done == end_step:
            checkpoint(done)
        if val_set and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.max_steps):
            _validate(cfg, ctx, model, spec, val_set, metrics, done)
    bar.close()
    del batches  # stop the DataLoader workers
    if ctx.distributed:
        difference = distributed.replica_difference(model, ctx)
        metrics.write({"step": end_step, "replica_max_abs_diff": difference})
        if difference and ctx.is_main:
            log.warning("ranks ended with different parameters (max |diff| %g)", difference)
    final = run_dir / FINAL_MODEL
    if ctx.is_main and end_step == cfg.max_steps:
        save_checkpoint(model, spec, final)
        log.info("wrote %s", final)
    distributed.barrier(ctx)
    return final if end_step == cfg.max_steps else checkpoint_paths(run_dir, end_step)[0]


def _check_memory(cfg, ctx, model, spec, memory_format, autocast) -> None:
    """Refuse a batch size that cannot fit before the first step (see r21d.train.memory)."""
    shape = (1, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    clip = torch.zeros(shape, device=ctx.device).to(memory_format=memory_format)
    try:
        figures = check_fits(model, clip, cfg.batch_size, cfg.optimizer, autocast)
    except OSError as e:  # no /proc to measure with: train without the check
        log.warning("memory check skipped: %s", e)
        return
    if ctx.is_main:
        log.info(
            "memory: %.2f GiB per clip, %.1f GiB needed of %.1f GiB available",
            figures["bytes_per_clip"] / 2**30,
            figures["needed_bytes"] / 2**30,
            figures["available_bytes"] / 2**30,
        )


def _precise_bn(cfg, ctx, model, batches, memory_format, autocast) -> None:
    """Recompute BN statistics with the final weights on the next training batches."""
    clips = (
        next(batches)[0].to(ctx.device, memory_format=memory_format)
        for _ in range(cfg.precise_bn_batches)
    )
    with autocast:
        used = recompute_bn_statistics(model, clips, ctx)
    if ctx.is_main:
        log.info("recomputed BN statistics over %d batches", used)


def _record_run(cfg: TrainConfig, ctx: distributed.Context, train_set: VideoSet) -> None:
    """A new run's ``config.yaml`` and ``labels.txt``, once every check has passed (rank 0);
    a resumed run keeps the ones it was started with."""
    if ctx.is_main and not cfg.resume:
        cfg.save(Path(cfg.output_dir) / "config.yaml")
        save_label_map(train_set.label_names, Path(cfg.output_dir) / "labels.txt")


def _resume(run_dir: Path, step: int, model: nn.Module) -> dict:
    """Load the checkpoint of ``step`` (its spec was checked by the preflight) into ``model``."""
    weights, state_path = checkpoint_paths(run_dir, step)
    tensors = load_file(str(weights))
    if set(tensors) != set(model_tensors(model)):
        raise BadOptionError(f"--resume: {weights} does not hold this model's tensors")
    model.load_state_dict(tensors, strict=False)
    return load_training_state(state_path)


def _next_batch(batches, manifest: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The next training batch; a data error in one line naming the manifest (a DataLoader
    worker's comes back with the worker's traceback folded into its message)."""
    try:
        return next(batches)
    except UnusableDataError as e:
        # in a worker's: "... Original Traceback ...\nr21d.errors.UnusableDataError: MESSAGE"
        last = str(e).strip().splitlines()[-1]
        message = last.partition(": ")[2] if "\n" in str(e).strip() else last
        raise UnusableDataError(f"--train-manifest {manifest}: {message}") from None


def _loader(
    cfg: TrainConfig, ctx: distributed.Context, spec: ModelSpec, data: VideoSet, start: int
) -> DataLoader:
    weights = None
    if cfg.sampling == "sqrt":
        weights = class_power_weights(data.records, data.num_classes, power=0.5)
    sampler = DistributedDrawSampler(
        len(data.records),
        weights=weights,
        world_size=ctx.world_size,
        rank=ctx.rank,
        seed=cfg.seed,
        start=start,
    )
    dataset = TrainClips(data.records, spec, flip=cfg.flip, multi_label=cfg.multi_label)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
        worker_init_fn=ignore_ctrl_c,
    )


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise BadOptionError("fp16 autocast needs CUDA; use bf16 on CPU")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: str) -> torch.Tensor:
    if multi_label == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def _correct(logits: torch.Tensor, targets: torch.Tensor, multi_label: str) -> int:
    top = logits.detach().argmax(1)
    if multi_label == "sigmoid":
        return int(targets.gather(1, top[:, None]).sum())
    return int((top == targets).sum())


class _Window:
    """Loss, accuracy and throughput since the last metric line."""

    def __init__(self):
        self.loss = self.correct = self.clips = self.steps = 0
        self.since = time.perf_counter()

    def add(self, loss: float, correct: int, clips: int) -> None:
        self.loss += loss
        self.correct += correct
        self.clips += clips
        self.steps += 1

    def flush(self, ctx: distributed.Context) -> dict:
        elapsed = time.perf_counter() - self.since
        record = {
            "loss": distributed.all_mean(self.loss / max(1, self.steps), ctx),
            "clip_acc": distributed.all_mean(self.correct / max(1, self.clips), ctx),
            "clips_per_s": self.clips / max(elapsed, 1e-9),
        }
        self.__init__()
        return record


def _scoring_runtime(cfg: TrainConfig) -> RuntimeOptions:
    """Validation and the linear probe score through the scoring core with these options."""
    return RuntimeOptions(
        channels_last=cfg.channels_last,
        threads=cfg.threads,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
    )


def _validate(cfg, ctx, model, spec, val_set, metrics, step) -> None:
    if ctx.is_main:
        result = evaluate_videos(
            model, val_set.records, spec, num_clips=cfg.val_clips, device=str(ctx.device),
            runtime=_scoring_runtime(cfg), progress=cfg.progress,
        )  # fmt: skip
        metrics.write({"step": step, **result.to_dict()})
        log.info("step %d: validation video accuracy %.4f", step, result.video_accuracy)
    distributed.barrier(ctx)


def _linear_probe(cfg, ctx, model, spec, train_set, val_set, metrics) -> Path:
    final = Path(cfg.output_dir) / FINAL_MODEL
    if ctx.is_main:
        model.to(ctx.device)
        linear_probe(
            model, train_set.records, spec, l2=cfg.l2, steps=cfg.lbfgs_steps,
            num_clips=cfg.val_clips, device=str(ctx.device), runtime=_scoring_runtime(cfg),
            progress=cfg.progress,
        )  # fmt: skip
        save_checkpoint(model, spec, final)
        if val_set:
            result = evaluate_videos(
                model, val_set.records, spec, num_clips=cfg.val_clips, device=str(ctx.device),
                runtime=_scoring_runtime(cfg),
            )  # fmt: skip
            metrics.write({"step": 0, **result.to_dict()})
    distributed.barrier(ctx)
    return final
