"""Exponential moving average of a model's weights, used for evaluation and sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An averaged copy of `model`. Only the children named in `networks` are averaged (all when
    empty); the others track the live weights exactly: a GAN averages its generator, while its
    discriminator, which is judged as it trained, is copied."""

    def __init__(self, model: nn.Module, decay: float, networks: tuple[str, ...] = ()) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        names = [n for n, _ in model.named_parameters()]
        self.averaged = [n for n in names if not networks or n.split(".")[0] in networks]
        self.copied = [n for n in names if n not in self.averaged]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Warm the decay up so early averages are not dominated by the random init.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live, mine = dict(model.named_parameters()), dict(self.model.named_parameters())
        torch._foreach_lerp_(
            [mine[n] for n in self.averaged], [live[n].detach() for n in self.averaged], 1 - decay
        )
        if self.copied:
            torch._foreach_copy_([mine[n] for n in self.copied], [live[n] for n in self.copied])
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
