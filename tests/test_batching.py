"""Image requests sampled together (GenerativeModel.sample_batch): each request's samples are
the ones it gets alone, whatever shares its batch, and a cancelled request's rows leave the
batch at the next step without changing the others."""

import pytest
import torch

from aigc_cli.data.base import DataSpec
from aigc_cli.errors import ConfigError
from aigc_cli.models.base import Request

from .helpers import tiny_model

SPEC = DataSpec(kind="image", shape=[1, 8, 8], num_classes=3)


def _model(name: str):
    torch.manual_seed(0)
    extra = {"timesteps": 50} if name == "diffusion" else {}
    return tiny_model(name, SPEC, base_channels=8, conditional=True, **extra).eval()


def _requests(options):
    return [
        Request(3, torch.Generator().manual_seed(1), {**options, "classes": [0]}),
        Request(6, torch.Generator().manual_seed(2), {**options, "classes": [1, 2]}),
        Request(3, torch.Generator().manual_seed(3), {**options}),
    ]


@pytest.mark.parametrize(
    "name, options",
    [
        ("diffusion", {"sampler": "ddim", "steps": 6, "eta": 1.0, "guidance": 2.0}),
        ("diffusion", {"sampler": "ddpm", "guidance": 1.0}),
        ("flow", {"sampler": "heun", "steps": 4, "guidance": 3.0}),
    ],
)
def test_requests_batched_equal_each_request_alone(name, options):
    model = _model(name)
    together = model.sample_batch(_requests(options))
    for request, result in zip(_requests(options), together, strict=True):
        alone = model.sample(request.n, generator=request.generator, **request.options)
        assert result.images.shape == alone.images.shape
        assert (result.images - alone.images).abs().max() < 1e-4
    # the three seeds drew different noise: the batch is not one request repeated
    assert (together[0].images[0] - together[2].images[0]).abs().max() > 0.05


def test_a_cancelled_request_leaves_the_batch_at_the_next_step():
    model = _model("diffusion")
    options = {"sampler": "ddim", "steps": 8, "eta": 1.0}
    steps_seen: list[int] = []
    requests = _requests(options)
    requests[1].on_step = lambda k, total: steps_seen.append(k)
    requests[1].cancelled = lambda: len(steps_seen) >= 3
    rows: list[int] = []
    step = model.sampling_step
    model.sampling_step = lambda x, *a: (rows.append(x.shape[0]), step(x, *a))[1]
    together = model.sample_batch(requests)
    assert together[1] is None and steps_seen == [1, 2, 3]
    assert rows == [12, 12, 12, 6, 6, 6, 6, 6]  # its 6 rows left after its third step
    model.sampling_step = step
    for i in (0, 2):
        alone = model.sample(3, generator=torch.Generator().manual_seed(i + 1),
                             **_requests(options)[i].options)  # fmt: skip
        assert (together[i].images - alone.images).abs().max() < 1e-4


def test_batch_keys_part_requests_that_cannot_share_a_sampler():
    model = _model("diffusion")
    keys = {model.batch_key(o) for o in ({}, {"steps": 6}, {"classes": [1]}, {"guidance": 2})}
    assert len(keys) == 3  # classes are per row; steps and guidance part batches
    with pytest.raises(ConfigError, match="sampler"):
        model.batch_key({"sampler": "euler"})
