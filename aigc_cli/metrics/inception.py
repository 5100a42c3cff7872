"""The Inception-v3 network of the standard FID (Heusel et al.'s TensorFlow graph, ported to
PyTorch as `pt_inception-2015-12-05-*.pth`), rebuilt from torchvision's Inception3 so that
`metrics.inception_weights=<that file>` gives FID figures comparable with published ones.

The TF graph differs from torchvision's network in its pooling branches: average pools leave
the zero padding out of the mean, and the last block max-pools. Both are applied here, to the
same modules and parameter names, so the weights file loads as it is (1008 classes: the graph's
output layer). A torchvision ImageNet state dict (1000 classes) also loads; its features are not
the standard FID's, and the metric's description says so."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import Inception3

from aigc_cli.errors import CheckpointError

FID_CLASSES = 1008  # the TF graph's output layer
FEATURE_DIM = 2048  # pool3 features


def _avg_pool_excluding_padding(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class _TFPooling:
    """Mixin for torchvision's Inception blocks: recompute the pooling branch (always the last
    output) with the TF graph's pooling. The block's own 1×1 pooled convolution runs twice; a
    small cost for not restating every branch of four block types."""

    tf_pool = staticmethod(_avg_pool_excluding_padding)

    def _forward(self, x: Tensor) -> list[Tensor]:
        outputs = super()._forward(x)  # type: ignore[misc]
        outputs[-1] = self.branch_pool(self.tf_pool(x))  # type: ignore[attr-defined]
        return outputs


def _tf_variant(block: nn.Module, pool=_avg_pool_excluding_padding) -> None:
    # Swapping the class keeps the module's parameters and names; only _forward changes.
    block.__class__ = type(f"TF{type(block).__name__}", (_TFPooling, type(block)), {})
    block.tf_pool = pool  # an instance attribute: called unbound, as pool(x)


class InceptionFeatures(nn.Module):
    """(B, C, H, W) images in [0, 1] → (B, 2048) pool3 features; gray images are repeated to
    RGB and every image is resized to 299×299 bilinearly, as the standard FID code does."""

    def __init__(self, num_classes: int = FID_CLASSES) -> None:
        super().__init__()
        net = Inception3(
            num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False
        )
        self.standard_fid = num_classes == FID_CLASSES
        if self.standard_fid:
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d"):
                _tf_variant(getattr(net, name))
            _tf_variant(net.Mixed_6e)
            _tf_variant(net.Mixed_7b)
            _tf_variant(net.Mixed_7c, pool=_max_pool)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = x * 2 - 1  # the graph's input range
        n = self.net
        for layer in (
            n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
            n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
            n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c,
            n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.avgpool,
        ):  # fmt: skip
            x = layer(x)
        return x.flatten(1)  # (B, 2048)


def load_inception(path: str | Path) -> InceptionFeatures:
    """Inception features from a weights file: a plain state dict, loaded without running code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Inception weights not found: {path}",
            hint="download pt_inception-2015-12-05-6726825d.pth (the FID weights of pytorch-fid) "
            "and pass its path, or leave inception_weights unset to use an aigc classifier",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable weights file ({str(e).splitlines()[0][:100]})",
            hint="pass the .pth state dict of the FID Inception network",
        ) from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None:
        raise CheckpointError(
            f"{path} holds no Inception-v3 state dict (no fc.weight)",
            hint="pass the .pth state dict of the FID Inception network",
        )
    model = InceptionFeatures(num_classes=fc.shape[0])
    # The auxiliary classifier is not built; its weights, when present, are not needed.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit Inception-v3 ({str(e).splitlines()[0][:100]})",
            hint="pass the .pth state dict of the FID Inception network",
        ) from e
    return model.eval()
