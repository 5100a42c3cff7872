"""Evaluation on the test split, shared by the training loop and `aigc eval`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from aigc_cli import distributed
from aigc_cli.data.base import DataModule
from aigc_cli.models.base import GenerativeModel, TrainedModel


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Random draws inside do not move the training RNG, so periodic evaluation and sampling
    leave a run's trajectory unchanged (and a resumed run identical to an uninterrupted one)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.no_grad()
def evaluate(
    model: TrainedModel,
    data: DataModule,
    *,
    batch_size: int = 256,
    max_batches: int = 0,
    num_samples: int = 0,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    world: distributed.World | None = None,
    sample_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Average the model's per-sample figures over the test split (or its first batches), then
    add the dataset's sample-based metrics on `num_samples` generated samples. `options` go to
    the model's `evaluate` (e.g. `iwae_k` for the VAE), `sample_options` to its sampler
    (sampler, steps...), whose NFE is reported beside the sample metrics.

    With several ranks, each evaluates every `world.size`-th batch and the sums are pooled, so
    the figures are those of the whole split; sample metrics come from rank 0."""
    world = world or distributed.World()
    device = model.device
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    with isolated_rng(device):
        torch.manual_seed(seed)
        for i, batch in enumerate(data.eval_iter(batch_size, max_batches)):
            if i % world.size != world.rank:
                continue
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            for k, v in model.evaluate(batch, **(options or {})).items():
                totals[k] = totals[k] + v if k in totals else v.detach().clone()
        sums = {}  # a rank may have no test batch of its own
        if totals:  # one device sync
            sums = dict(zip(totals, torch.stack(list(totals.values())).tolist(), strict=True))
        pooled = distributed.sum_objects(sums, world)  # the same dict with one rank
        n = pooled.pop("n")
        metrics = model.finalize_metrics({k: v / n for k, v in pooled.items()})
        if num_samples and isinstance(model, GenerativeModel):  # a classifier draws nothing
            extra = None
            if world.is_main:
                g = torch.Generator().manual_seed(seed)
                n = min(num_samples, data.metric_samples or num_samples)
                samples = model.sample(n, generator=g, **(sample_options or {}))
                extra = data.sample_metrics(samples)
                if samples.nfe is not None:
                    extra["nfe"] = float(samples.nfe)
            metrics.update(distributed.broadcast_object(extra, world))
    model.train(was_training)
    return metrics
