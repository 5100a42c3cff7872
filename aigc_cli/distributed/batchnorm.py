"""Batch norm over the global batch under data parallelism, on every device (torch's
SyncBatchNorm runs on GPUs only).

Each rank holds a share of the global batch; plain BatchNorm would normalise each share alone,
so N ranks would train a different model from one process. Here the per-channel sums are
all-reduced (differentiably: the backward pass all-reduces their gradients), so forward,
backward and the running statistics are those of the whole batch. The layers keep
BatchNorm's parameter and buffer names, so checkpoints move freely between 1 and N ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm1d/2d whose training-mode statistics span every rank's share of the batch."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-D to 4-D input (got {input.dim()}-D)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        local = torch.cat([x.float().sum(dims), count])
        total = dist_fn.all_reduce(local)  # (C + 1,): global sums and the global count
        n = total[-1]
        mean = total[:-1] / n
        centred = x.float() - mean.view(shape)
        var = dist_fn.all_reduce(centred.pow(2).sum(dims)) / n  # biased, as BatchNorm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased.detach(), m)
        return out.to(x.dtype)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def convert(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm1d/2d of `module` for a GlobalBatchNorm holding the same tensors."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
            new = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.state_dict().values())).device)
            setattr(module, name, new)
        else:
            convert(child)
    return module
