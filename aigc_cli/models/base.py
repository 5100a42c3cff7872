"""The interface every model family implements. Models own their math (losses, optimizer
groups, sampling); the training loop owns the mechanics (backward, AMP, clipping, stepping,
and logging each stage's loss).

    TrainedModel          what the loop trains: Config, data_kinds, training_step, evaluate
      GenerativeModel     ... and sample() -> a typed SampleResult (results/)
    capabilities, declared by inheriting them (command code asks isinstance, never hasattr):
      HasSamplers         a choice of samplers, steps and guidance (diffusion, flow)
      Interpolates        a latent space to walk (VAE, GAN)

A model the loop cannot use fails `check_interface` with one line naming what it lacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from aigc_cli.config import OptimConfig, check
from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec
from aigc_cli.data.music import music_spec
from aigc_cli.errors import ConfigError
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.optim import make_optimizer
from aigc_cli.results import Images, Music, Points, SampleResult


@dataclass
class Stage:
    """One optimizer update: the loop backprops `loss` and steps `optimizers[opt_name]`."""

    opt_name: str
    loss: Tensor
    scalars: dict[str, Tensor]  # logged as <opt_name>/<key>; detached tensors, no .item() here


@dataclass
class OnnxGraph:
    """One graph of `aigc export format=onnx`: a module over named tensor inputs. `example(n)`
    draws random inputs with batch n (and past or sequence length n where there is one), so the
    check can run the graph on other sizes than it was traced with. Randomness is always an
    input (the latent, the noisy image), never inside the graph."""

    name: str
    module: nn.Module
    example: Callable[[int], dict[str, Tensor]]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    about: str = ""  # what the inputs and outputs mean, for the model card


class TrainedModel(nn.Module):
    """What the training loop trains. A family that generates nothing (the classifier, the
    feature network of sample-quality metrics) is one of these and no more."""

    Config: type  # each family defines a dataclass of every hyperparameter

    #: DataSpec kinds the family can train on
    data_kinds: tuple[str, ...] = ("image",)
    #: whether it draws samples (a GenerativeModel); the loop logs samples only for those
    generates: bool = False
    #: children the EMA averages (empty = all); the others track the live weights
    ema_networks: tuple[str, ...] = ()
    #: config fields naming another run whose model becomes a frozen child: field → child.
    #: The builder loads the run and records its config as `<field>_config`; a model never
    #: reads a run folder itself.
    part_runs: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, cfg: Any, data: DataSpec) -> None:
        super().__init__()
        if data.kind not in self.data_kinds:
            raise ConfigError(
                f"model '{cfg.name}' cannot train on {data.kind} data",
                hint=f"pick a dataset with {' or '.join(self.data_kinds)} data; see `aigc list`",
            )
        self.cfg = cfg
        self.spec = data

    def optimizers(self, optim: OptimConfig) -> dict[str, Optimizer]:
        """Named optimizers; one per stage name that training_step yields."""
        return {"model": make_optimizer(self.parameters(), optim)}

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        """The stages of one step. Per-sample random draws go through `noise`, which the loop
        hands over so that every sample gets the same noise however many ranks share the batch.
        The loop logs each stage's loss as <opt_name>/loss; `scalars` are anything else."""
        raise NotImplementedError

    def train_batches(self, data: DataModule, batch_size: int, seed: int) -> BatchIterator:
        """The loop's training batches. A family may hand it a transformed copy of the data
        instead (latent diffusion encodes the training images once)."""
        return data.train_iter(batch_size, seed)

    def adapt_weights(
        self, state: dict[str, Tensor], source: DataSpec
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Another run's weights (`init_from`), made to fit this model's data where the family
        knows how; returns them with notes on what was changed."""
        return state, []

    def onnx_graphs(self) -> list[OnnxGraph]:
        """The family's generating path as ONNX graphs; none = the family has no ONNX export."""
        return []

    def uncompiled(self) -> dict[str, str]:
        """Children that `trainer.compile` must leave eager, each with the reason."""
        return {}

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        """Per-batch sums of per-sample figures, plus "n": the number of samples (or tokens) they
        are summed over. The caller divides the totals by the total n. `options` are optional
        extra estimates a family may offer (the VAE's `iwae_k`); others ignore them."""
        raise NotImplementedError

    def finalize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Derived metrics (bits/dim, perplexity) from the averaged figures."""
        return means

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        """How each metric was computed, for metrics.json / eval.json."""
        return {}

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@dataclass
class Request:
    """One caller's share of a batch (the server's requests): `n` samples with `options` (the
    keyword options of `sample`), drawn from the caller's own `generator`, so a seeded request
    gives the same samples alone or beside others."""

    n: int
    generator: torch.Generator
    options: dict[str, Any] = field(default_factory=dict)
    #: True once the caller has gone: its rows stop at the next token or denoising step
    cancelled: Callable[[], bool] = lambda: False
    #: text: each row's new text as it comes, (row, text); cut at whole characters
    on_text: Callable[[int, str], None] | None = None
    #: step k of N of a sampler, after each step
    on_step: Callable[[int, int], None] | None = None
    #: the request's result (None once cancelled), as soon as it is ready
    on_result: Callable[[SampleResult | None], None] | None = None

    def deliver(self, result: SampleResult | None) -> SampleResult | None:
        if self.on_result is not None:
            self.on_result(result)
        return result


#: the server's queue: given the rows decoding now, requests that may join them
More = Callable[[int], list[Request]]


class GenerativeModel(TrainedModel):
    """A model that draws samples: images, points or texts, as a typed result."""

    generates = True

    @property
    def takes_prompts(self) -> bool:
        """Whether `sample` takes `prompt` / `prompts` (text models, text-to-image)."""
        return False

    def batch_key(self, options: dict[str, Any]) -> Any:
        """Requests whose options give equal keys can share one `sample_batch` call; None =
        each request runs alone (the default: one call of `sample`)."""
        return None

    def sample_batch(
        self, requests: list[Request], more: More | None = None
    ) -> list[SampleResult | None]:
        """One result per request (None for a cancelled one), each also handed to its
        `on_result` as soon as it is ready. Families that batch override this; here each
        request is one `sample` call. A family that can add rows mid-way (token decoding)
        takes further requests from `more` and hands their results only to `on_result`."""
        out: list[SampleResult | None] = []
        for r in requests:
            result = None if r.cancelled() else self.sample(r.n, generator=r.generator,
                                                            **r.options)  # fmt: skip
            out.append(r.deliver(result))
        return out

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, **kw: Any
    ) -> SampleResult:
        """`n` samples as a result of their kind (Images, Points, Texts), with how they were
        drawn. Nothing is left on the module."""
        raise NotImplementedError

    @torch.no_grad()
    def log_images(self, batch: Batch) -> dict[str, Tensor]:
        """Extra image grids to log at each sample interval (e.g. reconstructions)."""
        return {}

    def as_music(self, rolls: Tensor, sampler: str = "", nfe: int | None = None) -> Music:
        """(N, pitches, steps) rolls of music data as Music, on the data's grid and pitches;
        for voiced data, (N, voices × pitches, steps), each voice's keys side by side."""
        m = music_spec(self.spec) or {}
        rolls, voices = rolls.bool().cpu(), None
        if m.get("voices"):
            voices = rolls.unflatten(1, (int(m["voices"]), -1))
            rolls = voices.any(1)
        return Music(rolls=rolls, low=int(m.get("low", 21)), step=float(m.get("step", 1.0)),
                     tempo=float(m.get("tempo", 90.0)), voices=voices, sampler=sampler,
                     nfe=nfe)  # fmt: skip

    def to_signed(self, x: Tensor) -> Tensor:
        """Images from [0, 1] to the [-1, 1] the networks work in; other data as it is."""
        return x.float() * 2 - 1 if self.spec.kind == "image" else x.float()

    def from_signed(self, x: Tensor) -> Tensor:
        """The networks' [-1, 1] back to images in [0, 1]; other data as it is."""
        return ((x + 1) / 2).clamp(0, 1) if self.spec.kind == "image" else x

    def as_result(
        self, x: Tensor, nrow: int = 0, sampler: str = "", nfe: int | None = None
    ) -> Images | Points | Music:
        """Generated images (N, C, H, W) or points (N, D) as the data's kind of result; images
        of piano rolls (music data) as Music, each pixel over 0.5 a sounding note."""
        if music_spec(self.spec) is not None:
            return self.as_music(x[:, 0] > 0.5, sampler, nfe)
        if self.spec.kind == "points":
            extent = float(self.spec.extra.get("extent", 0.0))
            return Points(points=x, extent=extent, sampler=sampler, nfe=nfe)
        return Images(images=x, nrow=nrow, sampler=sampler, nfe=nfe)


@dataclass
class SamplerOptions:
    """The sampler options of `aigc sample`, `aigc eval` (and the server): null = the model's."""

    sampler: str | None = None  # diffusion: ddim | ddpm; flow: euler | heun; null = the model's
    steps: int | None = None  # sampler steps; null = the model's
    guidance: float | None = None  # classifier-free guidance scale (conditional models)
    eta: float | None = None  # DDIM noise; null = the model's


class HasSamplers:
    """Capability: a choice of samplers. `sample()` takes these keyword options (`sampler`,
    `steps`, `guidance`, and whatever `sampler_options` adds)."""

    samplers: tuple[str, ...] = ()
    sampler_options: tuple[str, ...] = ("sampler", "steps", "guidance")

    def describe_sampler(self, sampler: str | None = None, steps: int | None = None) -> str:
        """The sampler these options pick, in words ("ddim, 50 steps")."""
        raise NotImplementedError


class Interpolates:
    """Capability: a latent space; `interpolate` draws rows of walks between random points."""

    def interpolate(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 8
    ) -> SampleResult:
        raise NotImplementedError


def conditional_classes(conditional: bool, data: DataSpec) -> int:
    """The classes a `model.conditional` family conditions on (0 = unconditional)."""
    if conditional:
        check(data.num_classes > 0, "model.conditional",
              "the dataset has no labels; use model.conditional=false")  # fmt: skip
    return data.num_classes if conditional else 0


def class_rows(
    num_classes: int, n: int, classes: list[int] | None, device: torch.device
) -> tuple[int, Tensor | None, int]:
    """Labels for about `n` samples of a class-conditional model: one grid row per class (of
    `classes`, default all), n // len(classes) each. Returns (count, labels, row length);
    an unconditional model gets (n, None, 0)."""
    if not num_classes:
        return n, None, 0
    wanted = list(range(num_classes)) if classes is None else list(classes)
    bad = [c for c in wanted if not 0 <= int(c) < num_classes]
    if bad or not wanted:
        raise ConfigError(
            f"bad value for 'classes': {bad or wanted}; choose class indices in [0, {num_classes})"
        )
    per = max(1, n // len(wanted))
    return per * len(wanted), torch.tensor(wanted).repeat_interleave(per).to(device), per


def check_interface(model: TrainedModel) -> None:
    """One line for a family that misses a part of the interface the loop relies on."""
    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
    needs = [("training_step", TrainedModel), ("evaluate", TrainedModel)]
    if model.generates:
        needs.append(("sample", GenerativeModel))
    if isinstance(model, HasSamplers):
        needs.append(("describe_sampler", HasSamplers))
    if isinstance(model, Interpolates):
        needs.append(("interpolate", Interpolates))
    missing = [m for m, base in needs if getattr(type(model), m) is getattr(base, m)]
    if missing:
        raise ConfigError(
            f"model '{name}' does not implement {', '.join(missing)}",
            hint="see docs/contributing.md: the model interface (aigc_cli/models/base.py)",
        )
    if not is_dataclass(getattr(model, "Config", None)):
        raise ConfigError(
            f"model '{name}' has no Config dataclass",
            hint="see docs/contributing.md: the model interface (aigc_cli/models/base.py)",
        )
