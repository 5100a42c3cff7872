"""The interface every model family implements. Models own their math (losses, optimizer
groups, sampling); the training loop owns the mechanics (backward, AMP, clipping, stepping)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from aigc_cli.config import OptimConfig
from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec
from aigc_cli.errors import ConfigError
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.optim import make_optimizer


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


class GenerativeModel(nn.Module):
    Config: type  # each family defines a dataclass of every hyperparameter

    #: DataSpec kinds the family can train on
    data_kinds: tuple[str, ...] = ("image",)
    #: False for helper models (the classifier): the loop logs no samples for them
    generates: bool = True
    #: children the EMA averages (empty = all); the others track the live weights
    ema_networks: tuple[str, ...] = ()

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
        hands over so that every sample gets the same noise however many ranks share the batch."""
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

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> Any:
        """`n` images in [0, 1] as (n, C, H, W), points as (n, D), or a list of texts."""
        raise NotImplementedError

    @torch.no_grad()
    def log_images(self, batch: Batch) -> dict[str, Tensor]:
        """Extra image grids to log at each sample interval (e.g. reconstructions)."""
        return {}

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
