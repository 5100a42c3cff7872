"""`train(cfg)`: one model-agnostic loop. Each step the model yields its stages and
`train_step` does backward, clipping and the optimizer step for each; periodic work is a plain
`if` block per kind (log, evaluate, sample quality, samples, checkpoint). Everything a run
needs lives in one `Run`, built by `setup`, passed explicitly to the named parts."""

from __future__ import annotations

import contextlib
import math
import re
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from aigc_cli import distributed, startup
from aigc_cli.build import build_data
from aigc_cli.config import OptimConfig, TrainerConfig, validate_optim, validate_trainer
from aigc_cli.data.base import has_sample_metrics
from aigc_cli.distributed import batchnorm as sync_batchnorm
from aigc_cli.errors import CheckpointError, ConfigError, TrainingError
from aigc_cli.metrics.quality import GROUPS, SampleQuality, check_best_metric, validate_metrics
from aigc_cli.models.base import TrainedModel
from aigc_cli.noise import Noise
from aigc_cli.optim import make_scheduler
from aigc_cli.store.checkpoint import load_checkpoint, save_checkpoint, save_rotating
from aigc_cli.store.paths import outputs_root
from aigc_cli.store.rundir import RunDir
from aigc_cli.store.runs import build_with_parts, load_sample_quality, resolve_checkpoint
from aigc_cli.training.cpu import configure_cpu
from aigc_cli.training.ema import EMA
from aigc_cli.training.evaluate import evaluate, isolated_rng
from aigc_cli.training.init_from import init_weights
from aigc_cli.training.logger import QuietLogger, RunLogger, Throughput, config_tree, flatten
from aigc_cli.training.precision import choose_precision
from aigc_cli.training.resume import restore
from aigc_cli.training.rng import rng_state, seed_everything
from aigc_cli.training.samples import log_samples
from aigc_cli.training.signals import StopFlag, TrainingInterrupted
from aigc_cli.training.step import Optimization, StepResult, Tally, train_step

AMP_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}
SAMPLE_KEYS = {k for keys in GROUPS.values() for k in keys}

# Every schedule is a function of the loop's step, so each scheduler steps once per loop step even
# when its optimizer did not (a GAN's G with n_critic > 1 skips its first steps). PyTorch warns
# about exactly that order; here it is intended.
warnings.filterwarnings(
    "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning
)


@dataclass
class Run:
    """The state of one training run; `setup` builds it, the loop's parts update it."""

    cfg: DictConfig
    t: TrainerConfig
    world: distributed.World
    device: torch.device
    run_dir: Path
    data: Any
    model: TrainedModel
    ema: EMA | None
    opt: Optimization
    batches: Any
    layout: torch.memory_format
    log: RunLogger
    mcfg: Any
    quality: SampleQuality | None
    choices: dict[str, str]
    step: int = 0
    saved_step: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # best value of trainer.best_metric
    skipped: int = 0  # steps skipped for a non-finite loss
    tally: Tally = field(default_factory=Tally)
    speed: Throughput = field(default_factory=Throughput)

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @property
    def eval_model(self) -> TrainedModel:
        return self.ema.model if self.ema else self.model

    @property
    def noise(self) -> Noise:
        return Noise(self.world.rank, self.world.size)


def train(
    cfg: DictConfig | dict[str, Any],
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    choices: dict[str, str] | None = None,
) -> dict[str, float]:
    """Train the model `cfg` describes; return the final test metrics.

    `resume` is a checkpoint (or run dir) to continue from: weights, optimizer, schedule, EMA,
    AMP scaler, RNG and data order are restored, and logging continues in the same event file.
    `choices` are the config groups picked on the command line, kept so a resume can tell a
    repeated `model=gan` from a change of model.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    if resume is None and cfg.get("resume"):
        resume = cfg.resume
    ckpt = load_checkpoint(resolve_checkpoint(resume)) if resume else None
    t = validate_trainer(cfg.trainer)
    configure_cpu(t.threads, t.keep_cpu_memory)
    # Under torchrun: join the process group; only rank 0 writes anything, into its run dir.
    world, device = distributed.init(t.device)
    try:
        if run_dir is None:
            run_dir = (
                RunDir.of_checkpoint(resolve_checkpoint(resume)).path
                if resume
                else default_run_dir()
            )
        run = setup(cfg, t, ckpt, world, device, Path(run_dir), choices or {})
        try:
            return loop(run)
        except BaseException as e:
            run.log.error(e)
            raise
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


def loop(run: Run) -> dict[str, float]:
    """The training loop: a step, then the periodic work, until max_steps or a stop signal."""
    t, stop = run.t, StopFlag()
    startup.resume()  # the run is built: the collector back on, start-up's objects frozen
    run.log.start_progress(t.max_steps, run.step)
    try:
        with stop.installed():
            while run.step < t.max_steps:
                batch = [tuple(to_device(x, run.device, run.layout) for x in next(run.batches))
                         for _ in range(t.accumulate)]  # fmt: skip
                want_norm = logs_after(t, run.step + 1)
                result = train_step(run.model, batch, run.step, run.opt, run.noise, want_norm)
                record(run, result)
                run.step += 1
                # Every rank stops after the same step.
                signum = distributed.any_rank(stop.signum, run.world)
                periodic(run, stopping=bool(signum))
                if signum:
                    name = signal.Signals(signum).name
                    raise TrainingInterrupted(
                        signum,
                        f"{name} received: stopped after step {run.step}, checkpoint written "
                        f"to {run.folder.last}",
                        hint=f"continue with: aigc train resume={run.run_dir}",
                    )
            metrics = finish(run)
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"out of memory on {run.device} at trainer.batch_size={t.batch_size}",
            hint="use a smaller trainer.batch_size or a smaller model",
        ) from e
    finally:
        run.log.stop_progress()
    return report(run, metrics)


def record(run: Run, result: StepResult) -> None:
    """A step's outcome into the run: scalars to the tally, EMA after a real update."""
    run.speed.add(run.t.batch_size * run.t.accumulate)
    if result.skipped:
        run.skipped += 1
        return
    run.tally.add(result.scalars)
    run.tally.add(result.norms)
    if run.ema is not None:
        run.ema.update(run.model)


def periodic(run: Run, stopping: bool = False) -> None:
    """The work due after this step: one `if` per kind. The last step's evaluation, samples
    and checkpoint are `finish`'s."""
    t, step = run.t, run.step
    last = step >= t.max_steps
    if logs_after(t, step) or stopping:
        flush_logs(run)
    else:
        run.log.advance(step)
    if every(step, t.eval_every) and not last:
        keep_best(run, evaluate_run(run, batches=t.eval_batches))
    if run.mcfg.names and every(step, run.mcfg.every) and not last:
        keep_best(run, sample_quality(run))
    if every(step, t.sample_every) and not last:
        samples(run)
    if every(step, t.ckpt_every) or stopping:
        checkpoint(run, must=stopping)


def finish(run: Run) -> dict[str, float]:
    """The end of the run: last scalars, the final evaluation on the whole test split, sample
    quality, a last grid and checkpoint, best.pt."""
    flush_logs(run)
    run.log.stop_progress()
    metrics = evaluate_run(run, batches=0, final=True)
    if run.mcfg.names:
        metrics.update(sample_quality(run))
    samples(run)
    checkpoint(run, must=True)
    keep_best(run, metrics)
    return metrics


def report(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    """Final figures to TensorBoard (scalars and HParams), metrics.json and the console;
    returns them as test/<name>."""
    final = {f"test/{k}": v for k, v in metrics.items()}
    run.log.scalars(final, run.step)
    resolved = OmegaConf.to_container(run.cfg, resolve=True)
    groups = ("model", "dataset", "optim", "trainer", "seed")
    hp = {k: v for k, v in flatten(resolved).items() if k.split(".")[0] in groups}
    run.log.hparams(hp, final, run.step)
    run.log.close()
    notes = {**run.model.describe_metrics({}), **(run.quality.describe() if run.quality else {})}
    record_ = {"step": run.step, **final, "methods": {f"test/{k}": v for k, v in notes.items()}}
    if run.world.is_main:
        run.folder.write_metrics(record_)
    run.log.summary(
        final,
        {
            "run dir": str(run.run_dir),
            "sample": f"aigc sample run={run.run_dir}",
            "view": f"tensorboard --logdir {run.run_dir.parent}",
        },
    )
    return final


# ---- building a run ------------------------------------------------------------------------


def setup(
    cfg: DictConfig,
    t: TrainerConfig,
    ckpt: dict[str, Any] | None,
    world: distributed.World,
    device: torch.device,
    run_dir: Path,
    choices: dict[str, str],
) -> Run:
    """Everything a run needs, built in order: data, model, EMA, compile, optimizers, the
    restored state of a resumed run, the logger. Fails before the first step on any config
    problem that can be seen without training (a bad best_metric, a missing classifier)."""
    o = validate_optim(cfg.optim)
    distributed.check_batch_size(t.batch_size, world)
    run_dir = Path(distributed.broadcast_object(str(run_dir), world))
    if world.is_main:
        make_run_dir(run_dir)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(int(cfg.get("seed", 0)))
    if device.type == "cuda":
        cuda_math(t.tf32)
    data, model, notes = build_parts(cfg, ckpt, device)
    notes += prepare_model(model, t, world)
    layout = memory_format(model, device, t.channels_last)
    model = model.to(memory_format=layout)
    if t.precision == "auto":
        notes.append(resolve_precision(cfg, t, ckpt, model, data, device, layout, world))
    mcfg = validate_metrics(cfg.get("metrics") or {})
    check_best_metric(t.best_metric, mcfg)
    # Sample-quality metrics load their feature network now, so a missing classifier fails
    # before the first step; they are computed on rank 0 and shared.
    quality = None
    if mcfg.names and world.is_main:
        quality = load_sample_quality(mcfg, mcfg.names, data, cfg.dataset.name, device)
    distributed.broadcast_module(model, world)
    # The EMA copy is taken before compiling: a compiled module's copy would still call the
    # original's forward.
    ema = EMA(model, t.ema_decay, model.ema_networks) if t.ema else None
    notes += compile_model(model, t.compile, t.compile_backend)
    opt = make_optimization(model, t, o, device, world)
    batches = model.train_batches(data, t.batch_size, int(cfg.get("seed", 0)))
    if world.parallel:
        batches = distributed.ShardedBatches(batches, world)
    run = Run(cfg, t, world, device, run_dir, data, model, ema, opt, batches, layout,
              QuietLogger(run_dir), mcfg, quality, dict(choices))  # fmt: skip
    if ckpt is not None:
        changes = restore(ckpt, run.model, run.ema, run.opt, run.batches, cfg)
        run.step = run.saved_step = int(ckpt["step"])
        run.best = dict(ckpt.get("best") or {})
        run.choices = {**(ckpt.get("choices") or {}), **run.choices}
        notes += [f"resumed from step {run.step}", *changes]
    check_metric_name(run)  # before anything is written
    run.log = open_logger(cfg, t, run_dir, world, ckpt)
    describe(run, notes)
    return run


def build_parts(
    cfg: DictConfig, ckpt: dict[str, Any] | None, device: torch.device
) -> tuple[Any, TrainedModel, list[str]]:
    """The data and the model (from init_from's weights when asked), with notes for the log."""
    data = build_data(cfg.dataset).to(device)
    if data.spec.extra.get("resolved"):  # dataset settings chosen from the data (auto)
        with open_dict(cfg):
            cfg.dataset.update(data.spec.extra["resolved"])
    model = build_with_parts(model_config(cfg, ckpt), data.spec).to(device)
    if ckpt is not None and ckpt["model"]["name"] != cfg.model.name:
        raise CheckpointError(
            f"cannot resume: the checkpoint is of model '{ckpt['model']['name']}', "
            f"the config asks for '{cfg.model.name}'",
            hint=f"resume with model={ckpt['model']['name']}",
        )
    notes = []
    if cfg.get("init_from") and ckpt is None:
        notes += init_weights(model, str(cfg.init_from))
    elif cfg.get("init_from"):
        notes.append("init_from is ignored: the run resumes from its own checkpoint")
    return data, model, notes


def model_config(cfg: DictConfig, ckpt: dict[str, Any] | None) -> Any:
    """The model's config; a resumed run takes what its model recorded when it started (a
    latent diffusion's autoencoder), so resuming reads no file the checkpoint names."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    saved = (ckpt or {}).get("model", {}).get("config") or {}
    if saved.get("autoencoder_config"):
        model = {**model, "autoencoder_config": saved["autoencoder_config"]}  # type: ignore[dict-item]
    return model


def resolve_precision(cfg: DictConfig, t: TrainerConfig, ckpt: dict[str, Any] | None,
                      model: TrainedModel, data: Any, device: torch.device, layout: Any,
                      world: distributed.World) -> str:  # fmt: skip
    """trainer.precision=auto → 32 or bf16 (aigc_cli/precision.py), written into the run's
    config; a resumed run keeps what it chose when it started. Rank 0 decides for all."""

    saved = ((ckpt or {}).get("config") or {}).get("trainer", {}).get("precision")
    if saved and saved != "auto":
        choice, why = str(saved), "as chosen when the run started"
    else:
        choice, why = "32", ""
        if world.is_main:

            def batch() -> tuple:  # a test batch, drawn only if the probe runs
                first = next(data.eval_iter(max(1, t.batch_size // world.size), 1))
                return tuple(to_device(x, device, layout) for x in first)

            choice, why = choose_precision(model, batch, device)
        choice, why = distributed.broadcast_object((choice, why), world)
    t.precision = choice
    with open_dict(cfg):
        cfg.trainer.precision = choice
    return f"precision auto → {choice}: {why}"


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the run dir {run_dir}: {e.strerror or e}",
            hint="pick a writable place with hydra.run.dir=<dir> or paths.outputs=<dir>",
        ) from e


def prepare_model(model: TrainedModel, t: TrainerConfig, world: distributed.World) -> list:
    """Batch norm over the global batch when several ranks share it (on by default where the
    model has BatchNorm: otherwise N ranks train a different model from one process)."""
    sync = t.sync_batchnorm if t.sync_batchnorm is not None else world.parallel
    if sync and world.parallel and sync_batchnorm.has_batchnorm(model):
        sync_batchnorm.convert(model)
        return ["batch norm synchronised over the ranks (trainer.sync_batchnorm)"]
    return []


def compile_model(model: TrainedModel, enabled: bool, backend: str = "inductor") -> list[str]:
    """torch.compile each network in place (parameter names, and so checkpoints, are the same
    with and without compile), except those the model says cannot be compiled."""
    if not enabled:
        return []
    skip = model.uncompiled()
    for name, child in model.named_children():
        if name not in skip:
            child.compile(backend=backend)
    return [f"compile: {name} left eager ({why})" for name, why in skip.items()]


def make_optimization(
    model: TrainedModel,
    t: TrainerConfig,
    o: OptimConfig,
    device: torch.device,
    world: distributed.World,
) -> Optimization:
    optimizers = model.optimizers(o)
    return Optimization(
        optimizers=optimizers,
        schedulers={k: make_scheduler(v, o, t.max_steps) for k, v in optimizers.items()},
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "16"),
        autocast_dtype=AMP_DTYPES.get(t.precision),
        device_type=device.type,
        grad_clip=t.grad_clip,
        skip_nonfinite=t.on_nonfinite == "skip",
        world=world,
    )


def open_logger(
    cfg: DictConfig,
    t: TrainerConfig,
    run_dir: Path,
    world: distributed.World,
    ckpt: dict[str, Any] | None,
) -> RunLogger:
    step = int(ckpt["step"]) if ckpt else 0
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if not world.is_main:
        return QuietLogger(run_dir)
    RunDir(run_dir).write_config(resolved)
    log = RunLogger(run_dir, progress=t.progress, purge_step=step + 1 if step else None)
    log.print(config_tree(OmegaConf.to_container(cfg, resolve=True), f"config → {run_dir}"))
    if not step:
        log.text("config", resolved, 0)
    return log


def describe(run: Run, notes: list[str]) -> None:
    for note in notes:
        run.log.print(note)
    n_params = run.model.num_parameters()
    per_rank = run.t.batch_size // run.world.size
    run.log.print(
        f"model [bold]{run.model.cfg.name}[/] ({n_params / 1e6:.2f}M parameters) on "
        f"{run.device}, precision {run.t.precision}"
        + (f", {run.world.size} ranks × batch {per_rank}" if run.world.parallel else "")
        + (f", {run.t.accumulate} micro-batches of {run.t.batch_size} per step "
           f"({run.t.batch_size * run.t.accumulate} samples)" if run.t.accumulate > 1 else "")
    )  # fmt: skip


def check_metric_name(run: Run) -> None:
    """A misspelled trainer.best_metric fails now, not at the first evaluation: the names of
    the model's test metrics come from evaluating one test batch."""
    name = run.t.best_metric
    if not name or name in SAMPLE_KEYS:
        return
    names = evaluate_run(run, batches=1, quiet=True)
    if name not in names:
        raise ConfigError(
            f"bad value for 'trainer.best_metric': '{name}' is not a test metric of this "
            f"model; choose from: {', '.join(names)}"
        )


# ---- the periodic work ---------------------------------------------------------------------


def every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def logs_after(t: TrainerConfig, step: int) -> bool:
    """Whether the loop flushes its scalars after step `step`."""
    return any(every(step, e) for e in (t.log_every, t.eval_every, t.sample_every, t.ckpt_every))


def flush_logs(run: Run) -> None:
    """The loop's only host-device sync: averaged scalars → TensorBoard and the console."""
    if not run.tally:
        if run.skipped:
            run.log.scalars({"train/skipped_steps": float(run.skipped)}, run.step)
        return
    means = run.tally.means()
    stacked = distributed.mean_tensor(torch.stack(list(means.values())), run.world)
    values = dict(zip(means, stacked.tolist(), strict=True))
    # Gradient norms are left out: with fp16 an inf norm is the GradScaler skipping a step.
    bad = {k: v for k, v in values.items() if not math.isfinite(v) and "grad_norm" not in k}
    if bad and run.t.on_nonfinite == "stop":
        terms = ", ".join(f"{k}={v}" for k, v in values.items())
        raise TrainingError(
            f"non-finite loss by step {run.step}: {terms}",
            hint="the last good checkpoint is kept; lower optim.lr, set trainer.grad_clip, "
            "or use trainer.on_nonfinite=skip",
        )
    values.update({f"lr/{k}": s.get_last_lr()[0] for k, s in run.opt.schedulers.items()})
    rate = run.speed.rate()
    values["perf/samples_per_s"] = rate
    if run.skipped:
        values["train/skipped_steps"] = float(run.skipped)
    run.log.scalars(values, run.step)
    run.log.step_line(run.step, values)
    loss = next((v for k, v in values.items() if k.endswith("/loss")), float("nan"))
    run.log.advance(run.step, loss=f"{loss:.4g}", rate=f"{rate:.0f}")
    run.tally.clear()


@contextlib.contextmanager
def inference(run: Run) -> Iterator[TrainedModel]:
    """The model that evaluates and samples (the EMA copy, or the live model), in eval mode
    (BatchNorm's running statistics, no dropout), uncompiled (evaluation's shapes and grad
    mode would each trigger a recompilation), and drawing from a forked RNG so the training
    trajectory does not depend on how often it runs."""
    model = run.eval_model
    was_training = model.training
    stance = contextlib.nullcontext()
    if run.t.compile and hasattr(torch.compiler, "set_stance"):
        stance = torch.compiler.set_stance("force_eager")
    model.eval()
    try:
        with isolated_rng(run.device), stance:
            yield model
    finally:
        model.train(was_training)


def evaluate_run(
    run: Run, batches: int, final: bool = False, quiet: bool = False
) -> dict[str, float]:
    """Test metrics of the evaluation model; logged under test/ unless `quiet`."""

    with inference(run) as model:
        # At the training batch size, final evaluation included: it fits wherever training
        # does, and a larger one set the run's peak memory (make bench's peak RSS table).
        metrics = evaluate(
            model,
            run.data,
            batch_size=run.t.batch_size,
            max_batches=batches,
            num_samples=run.t.eval_samples if final and has_sample_metrics(run.data) else 0,
            seed=run.seed,
            world=run.world,
        )
    if not quiet and not final:
        run.log.scalars({f"test/{k}": v for k, v in metrics.items()}, run.step)
    return metrics


def sample_quality(run: Run) -> dict[str, float]:
    """FID and friends from rank 0, the same figures on every rank."""
    q = None
    if run.quality is not None:
        with inference(run) as model:
            q = run.quality(model, run.seed)
    q = distributed.broadcast_object(q, run.world)
    run.log.scalars({f"test/{k}": v for k, v in q.items()}, run.step)
    return q


def samples(run: Run) -> None:
    if run.model.generates and run.world.is_main:
        with inference(run) as model:
            log_samples(run.log, model, run.data, run.t, run.seed, run.step, run.run_dir)


def checkpoint_state(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    return {
        "model": {"name": run.model.cfg.name, "config": asdict(run.model.cfg)},
        "dataset": {
            "name": cfg.dataset.name,
            "spec": run.data.spec.to_dict(),
            "config": OmegaConf.to_container(cfg.dataset, resolve=True),
        },
        "step": run.step,
        "model_state": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema else None,
        "optimizers": {k: v.state_dict() for k, v in run.opt.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in run.opt.schedulers.items()},
        "scaler": run.opt.scaler.state_dict(),
        "rng": rng_state(),
        "data_state": run.batches.state_dict(),
        "best": dict(run.best),
        "choices": dict(run.choices),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def checkpoint(run: Run, must: bool = False) -> None:
    """Write step_N.pt + last.pt unless this step is already saved (a resumed start, or a
    periodic save on the last step). A periodic write that fails (disk full) must not end
    hours of training: the previous checkpoint is intact; say so and try again later."""
    if run.step == run.saved_step or not run.world.is_main:
        return
    try:
        save_rotating(checkpoint_state(run), run.folder.checkpoints, run.step,
                      run.t.keep_checkpoints)  # fmt: skip
        run.saved_step = run.step
    except CheckpointError as e:
        if must:
            raise
        run.log.print(f"[red]warning:[/] {e}")


def keep_best(run: Run, metrics: dict[str, float]) -> None:
    """best.pt when trainer.best_metric improved; the best value so far travels in checkpoints,
    so a resumed run only replaces best.pt with something better than what it holds."""
    name = run.t.best_metric
    if not name or name not in metrics:
        return  # a sample metric, judged when the sample metrics are computed
    value, sign = metrics[name], 1.0 if run.t.best_mode == "min" else -1.0
    if run.best and sign * value >= sign * run.best["value"]:
        return
    run.best.update(metric=name, value=value, step=run.step)
    if run.world.is_main:
        save_checkpoint(checkpoint_state(run), run.folder.best)
    run.log.print(f"best.pt: {name}={value:.5g} at step {run.step}")


# ---- devices and layouts -------------------------------------------------------------------


def default_run_dir() -> Path:

    return outputs_root() / time.strftime("%Y-%m-%d/%H-%M-%S")


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
