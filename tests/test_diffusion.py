"""Diffusion and flow matching against closed forms: the forward marginal, the parameterisation
conversions, samplers driven by the analytically optimal denoiser of Gaussian data, guidance,
and the variational bound of that denoiser against the data's exact negative log-likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from aigc_cli.data.base import DataSpec
from aigc_cli.errors import ConfigError
from aigc_cli.models.diffusion import Diffusion, Schedule, make_schedule
from aigc_cli.models.flow import TIME_SCALE, Flow

MU = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]])
POINTS = DataSpec("points", [2])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_marginal_has_the_stated_mean_and_variance(kind):
    s = Schedule(make_schedule(kind, 1000))
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for t in (0, 250, 999):
        tt = torch.full((x0.shape[0],), t)
        xt = s.q_sample(x0, tt, torch.randn_like(x0))
        a = s.abar[t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - a, rel=2e-2, abs=1e-5)
    assert s.abar[-1] < 1e-3  # x_T is (close to) pure noise


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_parameterisations_round_trip(kind):
    s = Schedule(make_schedule("cosine", 1000))
    x0, eps = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,))
    xt = s.q_sample(x0, t, eps)
    x0_back, eps_back = s.split(s.target(x0, eps, t, kind), xt, t, kind)
    assert torch.allclose(x0_back, x0, atol=1e-6) and torch.allclose(eps_back, eps, atol=1e-6)


class OptimalDiffusion(nn.Module):
    """E[x0 | x_t] for x0 ~ N(MU, COV) under the model's schedule, in its parameterisation."""

    def __init__(self, sched: Schedule, kind: str) -> None:
        super().__init__()
        self.sched, self.kind, self.w = sched, kind, nn.Parameter(torch.zeros(()))

    def forward(self, xt: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        a = self.sched.abar[t.long()].float().view(-1, 1, 1)  # (B, 1, 1)
        sa = a.sqrt()
        cov_t = a * COV + (1 - a) * torch.eye(2)  # Cov(x_t), (B, 2, 2)
        gain = sa * COV @ torch.linalg.inv(cov_t)  # Cov(x0, x_t) Cov(x_t)^-1
        x0 = MU + (gain @ (xt - sa.squeeze(-1) * MU).unsqueeze(-1)).squeeze(-1)
        sa, sb = sa.view(-1, 1), (1 - a).sqrt().view(-1, 1)
        eps = (xt - sa * x0) / sb
        return {"eps": eps, "x0": x0, "v": sa * eps - sb * x0}[self.kind]


def _optimal_diffusion(kind: str = "eps", schedule: str = "linear", T: int = 1000) -> Diffusion:
    cfg = Diffusion.Config(prediction=kind, schedule=schedule, timesteps=T, hidden=8)
    model = Diffusion(cfg, POINTS)
    model.net = OptimalDiffusion(model.sched, kind)
    return model.eval()


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.mean(0), torch.cov(x.T)


@pytest.mark.parametrize(
    ("kind", "sampler", "steps"),
    [("eps", "ddpm", None), ("v", "ddim", 250), ("x0", "ddim", 250), ("eps", "ddim", 250)],
)
def test_samplers_with_the_optimal_denoiser_reproduce_gaussian_data(kind, sampler, steps):
    """DDIM is a first-order integrator of the probability-flow ODE: with few steps it shrinks
    this Gaussian's variance (about 10% at 50 steps), so the check uses 250."""
    model = _optimal_diffusion(kind)
    g = torch.Generator().manual_seed(0)
    result = model.sample(8000, generator=g, sampler=sampler, steps=steps)
    mean, cov = _moments(result.points)
    assert torch.allclose(mean, MU, atol=0.035), mean
    assert torch.allclose(cov, COV, atol=0.035), cov
    assert result.nfe == (1000 if sampler == "ddpm" else steps)


def test_ddim_with_eta_zero_is_deterministic_given_its_noise():
    model = _optimal_diffusion()
    a = model.sample(16, generator=torch.Generator().manual_seed(1), steps=10).points
    b = model.sample(16, generator=torch.Generator().manual_seed(1), steps=10).points
    c = model.sample(16, generator=torch.Generator().manual_seed(2), steps=10).points
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = model.sample(16, generator=torch.Generator().manual_seed(1), steps=10, eta=1.0).points
    assert not torch.equal(a, d)  # eta > 0 adds fresh noise each step


class OptimalVelocity(nn.Module):
    """E[x1 - x0 | x_t] on the straight path, x0 ~ N(0, I), x1 ~ N(MU, COV)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, xt: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = (t / TIME_SCALE).view(-1, 1, 1)
        cov_t = (1 - t) ** 2 * torch.eye(2) + t**2 * COV  # (B, 2, 2)
        inv = torch.linalg.inv(cov_t)
        r = (xt - t.view(-1, 1) * MU).unsqueeze(-1)  # x_t - E[x_t]
        e_x1 = MU + (t * COV @ inv @ r).squeeze(-1)
        e_x0 = ((1 - t) * inv @ r).squeeze(-1)
        return e_x1 - e_x0


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 100), ("heun", 20)])
def test_flow_samplers_with_the_optimal_velocity_reproduce_gaussian_data(sampler, steps):
    model = Flow(Flow.Config(hidden=8), POINTS).eval()
    model.net = OptimalVelocity()
    result = model.sample(8000, generator=torch.Generator().manual_seed(0), sampler=sampler,
                          steps=steps)  # fmt: skip
    mean, cov = _moments(result.points)
    assert torch.allclose(mean, MU, atol=0.035) and torch.allclose(cov, COV, atol=0.035), cov
    assert result.nfe == steps * (2 if sampler == "heun" else 1)


class LabelNet(nn.Module):
    """A 'network' whose prediction is its label (the null label predicts -1)."""

    def __init__(self, null: int) -> None:
        super().__init__()
        self.null, self.w = null, nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        v = torch.where(y == self.null, -1.0, y.float())
        return v.view(-1, 1).expand_as(x)


def test_guidance_one_is_conditional_zero_unconditional():
    spec = DataSpec("points", [2], num_classes=3)
    model = Diffusion(Diffusion.Config(conditional=True, hidden=8), spec)
    model.net = LabelNet(null=3)
    x, t, y = torch.zeros(3, 2), torch.zeros(3), torch.tensor([0, 1, 2])
    assert torch.equal(model.guided(x, t, y, 1.0)[:, 0], y.float())
    assert torch.equal(model.guided(x, t, y, 0.0)[:, 0], torch.full((3,), -1.0))
    # w = 3: u + 3 (c - u) = -1 + 3 (y + 1)
    assert torch.allclose(model.guided(x, t, y, 3.0)[:, 0], -1 + 3 * (y.float() + 1))


def test_bound_of_the_optimal_denoiser_is_close_to_the_exact_nll():
    """On Gaussian data the bound of the optimal denoiser approaches -log p(x) (it is a bound:
    at or above it, up to the Monte-Carlo error)."""
    model = _optimal_diffusion("eps", T=1000)
    torch.manual_seed(0)
    x = torch.distributions.MultivariateNormal(MU, COV).sample((4000,))
    out = model.evaluate((x, torch.zeros(4000)))
    bound = out["nelbo"].item() / 4000
    exact = -torch.distributions.MultivariateNormal(MU, COV).log_prob(x).mean().item()
    assert exact - 0.05 < bound < exact + 0.15, (bound, exact)


def test_bad_sampling_options_are_one_line():
    model = _optimal_diffusion()
    with pytest.raises(ConfigError, match="'heun' does not fit model 'diffusion'"):
        model.sample(4, sampler="heun")
    with pytest.raises(ConfigError, match="more than T=1000"):
        model.sample(4, steps=2000)
    with pytest.raises(ConfigError, match="needs a class-conditional model"):
        model.sample(4, guidance=3.0)
    with pytest.raises(ConfigError, match="steps"):
        model.sample(4, steps=0)


def test_conditional_grid_has_one_row_per_class():
    spec = DataSpec("image", [1, 16, 16], num_classes=3)
    cfg = Diffusion.Config(conditional=True, base_channels=8, timesteps=10, steps=2)
    model = Diffusion(cfg, spec)
    result = model.eval().sample(7, steps=2, guidance=2.0)
    assert result.images.shape == (6, 1, 16, 16) and result.nrow == 2
    assert result.nfe == 2 * 2  # guidance batches the two predictions: 2 per step


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_training_loss_falls_on_shapes(make_cfg, tmp_path, family):
    from aigc_cli.training.loop import train

    from .helpers import read_scalars

    cfg = make_cfg("model.base_channels=8", "trainer.max_steps=40", "trainer.log_every=10",
                   "trainer.batch_size=16", "dataset.image_size=16", "optim.warmup_steps=0",
                   "trainer.eval_every=0", "trainer.sample_every=0", "trainer.ckpt_every=0",
                   model=family)  # fmt: skip
    train(cfg, run_dir=tmp_path)
    curve = [v for _, v in read_scalars(tmp_path)["model/loss"]]
    assert curve[-1] < 0.9 * curve[0], curve
