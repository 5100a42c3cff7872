"""Schemas of the config groups that are not components (trainer, optim) and the validation
that turns a composed DictConfig section into a typed dataclass, failing with one line."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from aigc_cli.errors import ConfigError

T = TypeVar("T")


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 where it pays, else 32) | 32 | bf16 | 16 (GradScaler)
    max_steps: int = 1000  # optimizer steps (a GAN step = one D and one G update)
    batch_size: int = 64  # samples per micro-batch (all ranks together)
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    grad_clip: float = 0.0  # max global grad norm per optimizer; 0 = no clipping
    log_every: int = 25  # scalars to TensorBoard and the progress bar
    eval_every: int = 500  # evaluation on the test split; 0 = only at the end
    eval_batches: int = 0  # batches per periodic evaluation; 0 = the whole test split
    sample_every: int = 500  # sample grid / text sample; 0 = only at the end
    num_samples: int = 64  # images in each logged sample grid
    ckpt_every: int = 500  # checkpoints/step_N.pt (+ last.pt); 0 = only at the end
    keep_checkpoints: int = 3  # newest step_N.pt files kept; older ones are deleted
    best_metric: str | None = None  # keep checkpoints/best.pt by this test metric; null = off
    best_mode: str = "min"  # min | max: which direction of best_metric is better
    ema: bool = False  # keep an exponential moving average of the weights for eval and sampling
    ema_decay: float = 0.999  # EMA decay (warmed up from 0 over the first steps)
    compile: bool = False  # torch.compile the model's networks
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: quick, for debugging)
    channels_last: bool | None = None  # NHWC layout for conv nets; null = on CUDA only
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions; false = full fp32 precision
    threads: int = 0  # CPU threads for torch; 0 = leave torch's default
    keep_cpu_memory: bool = True  # glibc: reuse freed host memory instead of re-faulting it
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower, reproducible)
    progress: bool = True  # rich progress bar on the console
    eval_samples: int = 2500  # generated samples for sample-based metrics (e.g. mode coverage)
    on_nonfinite: str = "stop"  # NaN/inf loss: stop (keep the last good checkpoint) | skip the step
    sync_batchnorm: bool | None = None  # batch norm over all ranks' shares; null = when multi-rank


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (Adam) weight decay
    eps: float = 1e-8  # Adam epsilon
    schedule: str = "constant"  # constant | cosine (linear warmup, then cosine decay)
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr: float = 0.0  # cosine schedule's final learning rate
    decay_steps: int = 0  # cosine decay length; 0 = trainer.max_steps
    impl: str = "auto"  # auto | fused | foreach | loop: torch's Adam kernel (auto: fused if it can)


CHOICES: dict[str, tuple[str, ...]] = {
    "trainer.precision": ("auto", "32", "bf16", "16"),
    "trainer.on_nonfinite": ("stop", "skip"),
    "trainer.best_mode": ("min", "max"),
    "optim.name": ("adam", "adamw"),
    "optim.schedule": ("constant", "cosine"),
    "optim.impl": ("auto", "fused", "foreach", "loop"),
}


def validate(section: str, schema: type[T], node: Any) -> T:
    """Check `node` against the dataclass `schema`; return a typed instance.

    A misspelled key or a value of the wrong type becomes one ConfigError line that names the
    key and what is allowed.
    """
    names = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    if node is None:
        node = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    unknown = [k for k in node if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        guess = f" (did you mean '{section}.{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown config key '{section}.{unknown[0]}'{guess}; allowed keys in {section}: "
            f"{', '.join(names)}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except (ValidationError, ConfigKeyError) as e:
        key = getattr(e, "full_key", None) or "?"
        ftype = {f.name: f.type for f in dataclasses.fields(schema)}.get(key.split(".")[0], "?")
        value = node.get(key.split(".")[0]) if isinstance(node, dict) else None
        raise ConfigError(
            f"bad value for '{section}.{key}': {value!r} is not a valid {_type_name(ftype)}"
        ) from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config in '{section}': {str(e).splitlines()[0]}") from e
    obj = OmegaConf.to_object(merged)
    for key, allowed in CHOICES.items():
        sec, name = key.split(".")
        if sec == section and str(getattr(obj, name)) not in allowed:
            raise ConfigError(
                f"bad value for '{key}': {getattr(obj, name)!r}; choose from: {', '.join(allowed)}"
            )
    return obj  # type: ignore[return-value]


def command_options(node: Any) -> dict[str, Any]:
    """A command's own options: its config less Hydra's section and the shared `paths`
    (which the CLI applies before the command runs)."""
    return {k: v for k, v in node.items() if k not in ("hydra", "paths")}


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def check(condition: bool, key: str, message: str) -> None:
    """Range check for a config value: `check(cfg.lr > 0, "optim.lr", "must be > 0")`."""
    if not condition:
        raise ConfigError(f"bad value for '{key}': {message}")


def validate_trainer(node: Any) -> TrainerConfig:
    t = validate("trainer", TrainerConfig, node)
    check(t.max_steps >= 1, "trainer.max_steps", f"{t.max_steps} must be >= 1")
    check(t.batch_size >= 1, "trainer.batch_size", f"{t.batch_size} must be >= 1")
    check(t.accumulate >= 1, "trainer.accumulate", f"{t.accumulate} must be >= 1 (1 = off)")
    check(t.grad_clip >= 0, "trainer.grad_clip", f"{t.grad_clip} must be >= 0 (0 = off)")
    for k in ("log_every", "eval_every", "sample_every", "ckpt_every", "eval_batches", "threads"):
        check(getattr(t, k) >= 0, f"trainer.{k}", f"{getattr(t, k)} must be >= 0")
    check(t.log_every >= 1, "trainer.log_every", "must be >= 1")
    check(t.keep_checkpoints >= 1, "trainer.keep_checkpoints", "must be >= 1")
    check(t.num_samples >= 1, "trainer.num_samples", "must be >= 1")
    check(0.0 <= t.ema_decay < 1.0, "trainer.ema_decay", f"{t.ema_decay} must be in [0, 1)")
    return t


def validate_optim(node: Any) -> OptimConfig:
    o = validate("optim", OptimConfig, node)
    check(o.lr > 0, "optim.lr", f"{o.lr} must be > 0")
    check(len(o.betas) == 2, "optim.betas", "needs two values, e.g. [0.9, 0.999]")
    check(all(0 <= b < 1 for b in o.betas), "optim.betas", f"{o.betas} must lie in [0, 1)")
    check(o.weight_decay >= 0, "optim.weight_decay", f"{o.weight_decay} must be >= 0")
    check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    check(o.min_lr >= 0, "optim.min_lr", "must be >= 0")
    return o
