"""`train(cfg)`: one model-agnostic loop. Each step the model yields its stages; the loop does
backward (with AMP scaling), clipping and the optimizer step for each. Periodic work is a plain
`if` block per kind: log, evaluate, sample, checkpoint."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer

from aigc_cli import distributed
from aigc_cli.build import build_data, build_model, resolve_checkpoint
from aigc_cli.checkpoint import load_checkpoint, save_checkpoint, save_rotating
from aigc_cli.config import OptimConfig, TrainerConfig, validate_optim, validate_trainer
from aigc_cli.cpu import configure_cpu
from aigc_cli.ema import EMA
from aigc_cli.errors import AigcError, CheckpointError, ConfigError, TrainingError
from aigc_cli.evaluate import evaluate, isolated_rng
from aigc_cli.logger import (
    QuietLogger,
    RunLogger,
    Throughput,
    config_tree,
    flatten,
    save_grid,
    to_grid,
)
from aigc_cli.metrics.quality import (
    GROUPS,
    SampleQuality,
    check_best_metric,
    validate_metrics,
)
from aigc_cli.models.base import Stage
from aigc_cli.optim import make_scheduler
from aigc_cli.plots import scatter_image

AMP_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}

# Every schedule is a function of the loop's step, so each scheduler steps once per loop step even
# when its optimizer did not (a GAN's G with n_critic > 1 skips its first steps). PyTorch warns
# about exactly that order; here it is intended.
warnings.filterwarnings(
    "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning
)


class TrainingInterrupted(AigcError):
    """SIGINT/SIGTERM: a checkpoint was written; exit with 128 + the signal number."""

    def __init__(self, signum: int, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signum


class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one exits at
    once (the default handler's KeyboardInterrupt / termination)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # second signal: give up immediately
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )


def apply_stage(
    stage: Stage,
    optimizers: dict[str, Optimizer],
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    world: distributed.World | None = None,
    want_norm: bool = True,
) -> torch.Tensor | None:
    """backward → (average over ranks) → unscale → clip → step for one stage; returns the
    gradient norm (a tensor, so reading it costs no sync), or None when there is no clipping
    and `want_norm` is false: the norm is a full pass over the gradients, so the loop asks for
    it only on steps it logs. Only `optimizers[stage.opt_name]` steps: a GAN's generator stage
    leaves the discriminator's weights alone even though gradients reach them."""
    opt = optimizers[stage.opt_name]
    opt.zero_grad(set_to_none=True)
    scaler.scale(stage.loss).backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    if world is not None:
        # Before clipping, so the clip sees the global batch's gradient.
        distributed.average_gradients(params, world)
    scaler.unscale_(opt)
    norm = None
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    elif want_norm:
        norm = total_norm([p.grad for p in params if p.grad is not None])
    scaler.step(opt)
    return norm


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of `grads` without touching them (clip_grad_norm_ with an infinite
    limit would also rescale every gradient by 1)."""
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def default_run_dir() -> Path:
    return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


def _every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def cuda_math(tf32: bool) -> None:
    """CUDA's process-wide maths settings. TF32 matmuls and convolutions are nearly free speed on
    Ampere and later at no visible cost for these models; `trainer.tf32=false` keeps full fp32
    for anyone comparing numerics. cuDNN picks its fastest kernels for the (fixed) shapes."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def memory_format(model: nn.Module, device: torch.device, flag: bool | None) -> torch.memory_format:
    """channels_last for a conv net when asked, or by default on CUDA, where cuDNN's tensor-core
    kernels want NHWC and otherwise transpose every activation; on CPU it buys nothing
    measurable for these models, so the default leaves it off there."""
    use = device.type == "cuda" if flag is None else flag
    has_conv = any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules())
    return torch.channels_last if use and has_conv else torch.contiguous_format


def to_device(x: Tensor, device: torch.device, layout: torch.memory_format) -> Tensor:
    """A batch tensor on the training device; images (4-D) in the model's memory layout."""
    if x.dim() == 4 and layout is not torch.contiguous_format:
        return x.to(device, non_blocking=True, memory_format=layout)
    return x.to(device, non_blocking=True)


def train(
    cfg: DictConfig | dict[str, Any],
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> dict[str, float]:
    """Train the model `cfg` describes; return the final test metrics.

    `resume` is a checkpoint (or run dir) to continue from: weights, optimizer, schedule, EMA,
    AMP scaler, RNG and data order are restored, and logging continues in the same event file.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    t = validate_trainer(cfg.trainer)
    o = validate_optim(cfg.optim)
    seed = int(cfg.get("seed", 0))
    if resume is None and cfg.get("resume"):
        resume = cfg.resume
    ckpt = load_checkpoint(resolve_checkpoint(resume)) if resume else None
    configure_cpu(t.threads, t.keep_cpu_memory)
    # Under torchrun: join the process group; only rank 0 writes anything, into its run dir.
    world, device = distributed.init(t.device)
    try:
        return _train(cfg, t, o, seed, ckpt, world, device, run_dir, resume)
    except RuntimeError as e:
        if world.parallel and distributed.is_comm_failure(e):
            # Another rank died (its own error, or torchrun's report, names the cause); this
            # rank only lost its peers: say so in one line rather than with a gloo traceback.
            raise TrainingError(
                "lost contact with the other ranks: "
                + re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])[:120],
                hint="another rank failed first; its error (or torchrun's summary) says why",
            ) from e
        raise
    finally:
        if world.parallel:
            distributed.shutdown()


def _train(
    cfg: DictConfig,
    t: TrainerConfig,
    o: OptimConfig,
    seed: int,
    ckpt: dict[str, Any] | None,
    world: distributed.World,
    device: torch.device,
    run_dir: str | Path | None,
    resume: str | Path | None,
) -> dict[str, float]:
    per_rank_batch = distributed.check_batch_size(t.batch_size, world)
    if run_dir is None:
        run_dir = resolve_checkpoint(resume).parent.parent if resume else default_run_dir()
    run_dir = Path(distributed.broadcast_object(str(run_dir), world))
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(seed)
    if device.type == "cuda":
        cuda_math(t.tf32)

    data = build_data(cfg.dataset).to(device)
    model = build_model(cfg.model, data.spec).to(device)
    layout = memory_format(model, device, t.channels_last)
    model = model.to(memory_format=layout)
    # Sample-quality metrics (FID, KID, ...) are checked and their feature network loaded
    # before the first step, so a missing classifier fails now rather than at the end.
    mcfg = validate_metrics(cfg.get("metrics") or {})
    check_best_metric(t.best_metric, mcfg)
    quality = None
    if mcfg.names and world.is_main:  # computed on rank 0, then shared
        quality = SampleQuality(mcfg, mcfg.names, data, cfg.dataset.name, device)
    sample_keys = {k for keys in GROUPS.values() for k in keys}
    if ckpt is not None and ckpt["model"]["name"] != cfg.model.name:
        raise CheckpointError(
            f"cannot resume: the checkpoint is of model '{ckpt['model']['name']}', "
            f"the config asks for '{cfg.model.name}'",
            hint=f"resume with model={ckpt['model']['name']}",
        )
    # The EMA copy is taken before compiling: a compiled module's copy would still call the
    # original's forward.
    distributed.broadcast_module(model, world)
    ema = EMA(model, t.ema_decay) if t.ema else None
    if t.compile:
        # In place, so parameter names (and checkpoints) are the same with and without compile.
        for child in model.children():
            child.compile()
    optimizers = model.optimizers(o)
    schedulers = {k: make_scheduler(v, o, t.max_steps) for k, v in optimizers.items()}
    amp_dtype = AMP_DTYPES.get(t.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "16")
    batches = data.train_iter(t.batch_size, seed)
    if world.parallel:
        batches = distributed.ShardedBatches(batches, world)
    step = 0
    if ckpt is not None:
        step = _restore(ckpt, model, ema, optimizers, schedulers, scaler, batches)

    def state() -> dict[str, Any]:
        return {
            "model": {"name": model.cfg.name, "config": asdict(model.cfg)},
            "dataset": {
                "name": cfg.dataset.name,
                "spec": data.spec.to_dict(),
                "config": OmegaConf.to_container(cfg.dataset, resolve=True),
            },
            "step": step,
            "model_state": model.state_dict(),
            "ema": ema.state_dict() if ema else None,
            "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in schedulers.items()},
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "data_state": batches.state_dict(),
            "best": dict(best),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }

    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if world.is_main:
        (run_dir / "config.yaml").write_text(resolved)
        log = RunLogger(run_dir, progress=t.progress, purge_step=step + 1 if step else None)
    else:
        log = QuietLogger(run_dir)
    log.print(config_tree(OmegaConf.to_container(cfg, resolve=True), f"config → {run_dir}"))
    if step:
        log.print(f"[green]resumed from step {step}")
    else:
        log.text("config", resolved, 0)
    eval_model = ema.model if ema else model
    n_params = sum(p.numel() for p in model.parameters())
    log.print(
        f"model [bold]{model.cfg.name}[/] ({n_params / 1e6:.2f}M parameters) on {device}, "
        f"precision {t.precision}"
        + (f", {world.size} ranks × batch {per_rank_batch}" if world.parallel else "")
    )

    sums: dict[str, torch.Tensor] = {}
    counted = 0
    # gradient norms: every step when clipping, else only on the steps that are logged
    norms: dict[str, list[torch.Tensor]] = {}
    skipped = 0
    speed = Throughput()
    first_test = next(data.eval_iter(t.batch_size, 1))

    def flush_logs() -> None:
        """The loop's only host-device sync: averaged scalars → TensorBoard and the console."""
        nonlocal counted, sums
        if not counted:
            return
        means = [v / counted for v in sums.values()] + [
            torch.stack(v).mean() for v in norms.values()
        ]
        stacked = distributed.mean_tensor(torch.stack(means), world)
        values = dict(zip([*sums, *norms], stacked.tolist(), strict=True))
        # Gradient norms are left out: with fp16 an inf norm is the GradScaler skipping a step.
        bad = {
            k: v for k, v in values.items() if not math.isfinite(v) and not k.endswith("grad_norm")
        }
        if bad and t.on_nonfinite == "stop":
            terms = ", ".join(f"{k}={v}" for k, v in values.items())
            raise TrainingError(
                f"non-finite loss by step {step}: {terms}",
                hint="the last good checkpoint is kept; lower optim.lr, set trainer.grad_clip, "
                "or use trainer.on_nonfinite=skip",
            )
        values.update({f"lr/{k}": s.get_last_lr()[0] for k, s in schedulers.items()})
        rate = speed.rate()
        values["perf/samples_per_s"] = rate
        if skipped:
            values["train/skipped_steps"] = float(skipped)
        log.scalars(values, step)
        loss = next((v for k, v in values.items() if k.endswith("/loss")), float("nan"))
        log.advance(step, loss=f"{loss:.4g}", rate=f"{rate:.0f}")
        sums, counted = {}, 0
        norms.clear()

    def logs(at: int) -> bool:
        """Whether the loop flushes its scalars after step `at`."""
        return any(_every(at, e) for e in (t.log_every, t.eval_every, t.sample_every, t.ckpt_every))

    def eager() -> contextlib.AbstractContextManager:
        """Evaluation and sampling run uncompiled: their shapes and grad mode differ from the
        training step's, and would each trigger recompilation."""
        if t.compile and hasattr(torch.compiler, "set_stance"):
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    def log_samples() -> None:
        if not model.generates or not world.is_main:
            return
        with isolated_rng(device), eager():
            _log_samples(log, eval_model, data, t, seed, step, run_dir, first_test)

    saved_step = step

    def checkpoint(final: bool = False) -> None:
        """Write step_N.pt + last.pt unless this step is already saved (a resumed start, or
        a periodic save on the last step)."""
        nonlocal saved_step
        if step == saved_step or not world.is_main:
            return
        try:
            save_rotating(state(), run_dir / "checkpoints", step, t.keep_checkpoints)
            saved_step = step
        except CheckpointError as e:
            if final or stop.signum:
                raise
            # A periodic write that fails (disk full) must not end hours of training: the
            # previous checkpoint is intact; say so and try again at the next interval.
            log.print(f"[red]warning:[/] {e}")

    # The best value so far of trainer.best_metric; carried in checkpoints so a resumed run
    # only replaces best.pt with something better than what it already holds.
    best: dict[str, Any] = dict(ckpt.get("best") or {}) if ckpt is not None else {}

    def keep_best(m: dict[str, float]) -> None:
        if not t.best_metric:
            return
        if t.best_metric not in m:
            if t.best_metric in sample_keys:
                return  # judged when the sample metrics are computed
            raise ConfigError(
                f"bad value for 'trainer.best_metric': '{t.best_metric}' is not a test metric "
                f"of this model; choose from: {', '.join(m)}"
            )
        value = m[t.best_metric]
        sign = 1.0 if t.best_mode == "min" else -1.0
        if best and sign * value >= sign * best["value"]:
            return
        best.update(metric=t.best_metric, value=value, step=step)
        if world.is_main:
            save_checkpoint(state(), run_dir / "checkpoints" / "best.pt")
        log.print(f"best.pt: {t.best_metric}={value:.5g} at step {step}")

    def sample_quality() -> dict[str, float]:
        """FID and friends from rank 0, the same figures on every rank."""
        q = None
        if quality is not None:
            with isolated_rng(device), eager():
                q = quality(eval_model, seed)
        return distributed.broadcast_object(q, world)

    stop = StopFlag()
    log.start_progress(t.max_steps, step)
    autocast = torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )
    try:
        with stop.installed():
            while step < t.max_steps:
                batch = tuple(to_device(x, device, layout) for x in next(batches))
                stages = model.training_step(batch, step)
                skip = False
                while True:
                    with autocast:
                        stage = next(stages, None)
                    if stage is None:
                        break
                    if t.on_nonfinite == "skip" and not bool(torch.isfinite(stage.loss)):
                        skip = True  # abandon the whole step: no half-updated GAN
                        break
                    norm = apply_stage(
                        stage, optimizers, scaler, t.grad_clip, world, want_norm=logs(step + 1)
                    )
                    for k, v in stage.scalars.items():
                        key = f"{stage.opt_name}/{k}"
                        sums[key] = sums[key] + v.float() if key in sums else v.float()
                    if norm is not None:
                        norms.setdefault(f"{stage.opt_name}/grad_norm", []).append(norm.float())
                scaler.update()
                if skip:
                    skipped += 1
                    for opt in optimizers.values():
                        opt.zero_grad(set_to_none=True)
                else:
                    for s in schedulers.values():
                        s.step()
                    if ema is not None:
                        ema.update(model)
                    counted += 1
                step += 1
                speed.add(t.batch_size)
                if world.parallel:  # every rank stops after the same step
                    stop.signum = distributed.any_rank(stop.signum, world)

                if logs(step) or stop.signum:
                    flush_logs()
                else:
                    log.advance(step)
                if _every(step, t.eval_every) and step < t.max_steps:
                    with isolated_rng(device), eager():
                        m = evaluate(
                            eval_model,
                            data,
                            batch_size=t.batch_size,
                            max_batches=t.eval_batches,
                            seed=seed,
                            world=world,
                        )
                    log.scalars({f"test/{k}": v for k, v in m.items()}, step)
                    keep_best(m)
                if mcfg.names and _every(step, mcfg.every) and step < t.max_steps:
                    q = sample_quality()
                    log.scalars({f"test/{k}": v for k, v in q.items()}, step)
                    keep_best(q)
                if _every(step, t.sample_every) and step < t.max_steps:
                    log_samples()
                if _every(step, t.ckpt_every) or stop.signum:
                    checkpoint()
                if stop.signum:
                    name = signal.Signals(stop.signum).name
                    raise TrainingInterrupted(
                        stop.signum,
                        f"{name} received: stopped after step {step}, checkpoint written to "
                        f"{run_dir / 'checkpoints' / 'last.pt'}",
                        hint=f"continue with: aigc train resume={run_dir}",
                    )

            flush_logs()
            log.stop_progress()
            with isolated_rng(device), eager():
                metrics = evaluate(
                    eval_model,
                    data,
                    batch_size=max(t.batch_size, 256),
                    num_samples=t.eval_samples if _has_sample_metrics(data) else 0,
                    seed=seed,
                    world=world,
                )
            if mcfg.names:
                metrics.update(sample_quality())
            log_samples()
            checkpoint(final=True)
            keep_best(metrics)
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"out of memory on {device} at trainer.batch_size={t.batch_size}",
            hint="use a smaller trainer.batch_size or a smaller model",
        ) from e
    finally:
        log.stop_progress()

    final = {f"test/{k}": v for k, v in metrics.items()}
    log.scalars(final, step)
    hp = {
        k: v
        for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
        if k.split(".")[0] in ("model", "dataset", "optim", "trainer", "seed")
    }
    log.hparams(hp, final, step)
    log.close()
    notes = {**model.describe_metrics({}), **(quality.describe() if quality else {})}
    methods = {f"test/{k}": v for k, v in notes.items()}
    record = {"step": step, **final, "methods": methods}
    if world.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    log.summary(
        final,
        {
            "run dir": str(run_dir),
            "sample": f"aigc sample run={run_dir}",
            "view": f"tensorboard --logdir {run_dir.parent}",
        },
    )
    return final


def _has_sample_metrics(data: Any) -> bool:
    from aigc_cli.data.base import DataModule

    return type(data).sample_metrics is not DataModule.sample_metrics


def _restore(ckpt: dict[str, Any], model, ema, optimizers, schedulers, scaler, batches) -> int:
    try:
        model.load_state_dict(ckpt["model_state"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        for k, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        for k, s in schedulers.items():
            s.load_state_dict(ckpt["schedulers"][k])
        scaler.load_state_dict(ckpt["scaler"])
        batches.load_state_dict(ckpt["data_state"])
        set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"cannot resume from this checkpoint: {str(e).splitlines()[0][:120]}",
            hint="resume with the same model and dataset settings the run was started with",
        ) from e
    return int(ckpt["step"])


def _log_samples(
    log: RunLogger, model, data, t: TrainerConfig, seed: int, step: int, run_dir: Path, first_test
) -> None:
    """Samples from a fixed seed, so grids are comparable across steps."""
    g = torch.Generator().manual_seed(seed)
    samples_dir = run_dir / "samples"
    if data.spec.kind == "text":
        out = model.sample(2, generator=g, max_new_tokens=300)
    else:
        out = model.sample(t.num_samples, generator=g)
    if isinstance(out, list):  # text
        text = "\n\n---\n\n".join(out)
        log.text("samples", text, step)
        samples_dir.mkdir(parents=True, exist_ok=True)
        (samples_dir / f"step_{step:06d}.txt").write_text(text + "\n")
    elif data.spec.kind == "points":
        real = data.test[0][: t.num_samples * 4]
        img = scatter_image(real, out, data.spec.extra.get("extent", 0.0))
        log.image("samples", img, step)
        save_grid(img.unsqueeze(0), samples_dir / f"step_{step:06d}.png", nrow=1)
    else:
        nrow = getattr(model, "grid_nrow", 0) or 8
        grid = save_grid(out, samples_dir / f"step_{step:06d}.png", nrow=nrow)
        log.image("samples", grid, step)
        batch = tuple(x.to(model.device) for x in first_test)
        for name, images in model.log_images(batch).items():
            log.image(name, to_grid(images), step)
