import math

import pytest
import torch

from aigc_cli.config import OptimConfig
from aigc_cli.data.base import DataSpec
from aigc_cli.models.vae import VAE
from aigc_cli.training.loop import train

from .helpers import read_scalars


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_vae_shapes(shape):
    spec = DataSpec(kind="image", shape=list(shape))
    model = VAE(VAE.Config(latent_dim=6, base_channels=8), spec)
    x = torch.rand(5, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == (5, 6) and logvar.shape == (5, 6)
    assert model.decode(mu).shape == (5, *shape)
    assert model.sample(3).images.shape == (3, *shape)
    recon, kl = model.terms(x)
    assert recon.shape == (5,) and kl.shape == (5,)
    assert model.log_images((x, torch.zeros(5)))["reconstructions"].shape == (10, *shape)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 24)])
def test_mlp_vae_shapes_and_size(shape):
    model = VAE(VAE.Config(latent_dim=20, arch="mlp", hidden=400), DataSpec("image", list(shape)))
    x = torch.rand(5, *shape)
    recon, kl = model.terms(x)
    assert recon.shape == (5,) and kl.shape == (5,)
    assert model.sample(3).images.shape == (3, *shape)
    if shape == (1, 28, 28):  # 784-400-(2x20) / 20-400-784, the VAE paper's MNIST net
        n = sum(p.numel() for p in model.parameters())
        assert n == (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_kl_non_negative_and_losses_finite(likelihood):
    torch.manual_seed(0)
    spec = DataSpec(kind="image", shape=[1, 28, 28], binary=likelihood == "bernoulli")
    model = VAE(VAE.Config(latent_dim=4, base_channels=8, likelihood=likelihood), spec)
    x = (torch.rand(16, 1, 28, 28) > 0.5).float()
    for _ in range(3):  # also after weights move
        _, kl = model.terms(x)
        assert bool((kl >= 0).all())
        stage = next(model.training_step((x, None), 0))
        assert stage.opt_name == "model" and math.isfinite(stage.loss.item())
        opt = model.optimizers(OptimConfig(lr=1e-2))["model"]
        stage.loss.backward()
        opt.step()
        opt.zero_grad()
    m = model.evaluate((x, None))
    assert m["n"].item() == 16
    means = model.finalize_metrics({k: (v / m["n"]).item() for k, v in m.items() if k != "n"})
    assert means["bits_per_dim"] > 0


def test_bits_per_dim_conversion():
    spec = DataSpec(kind="image", shape=[1, 2, 2])
    model = VAE(VAE.Config(likelihood="bernoulli"), DataSpec(kind="image", shape=[1, 8, 8]))
    out = model.finalize_metrics({"nelbo": 64 * math.log(2)})
    assert out["bits_per_dim"] == pytest.approx(1.0)
    del spec


def test_vae_loss_falls_on_shapes(make_cfg, tmp_path):
    """~100 steps on shapes: the logged training loss falls well below where it started."""
    cfg = make_cfg(
        "trainer.max_steps=100",
        "trainer.batch_size=32",
        "trainer.log_every=10",
        "trainer.eval_every=0",
        "trainer.sample_every=0",
        "trainer.ckpt_every=0",
        "dataset.train_size=2000",
        "dataset.test_size=64",
        "model.base_channels=16",
        "model.latent_dim=16",
    )
    metrics = train(cfg, run_dir=tmp_path)
    losses = [v for _, v in read_scalars(tmp_path)["model/loss"]]
    assert len(losses) == 10
    assert all(math.isfinite(v) for v in losses)
    # nats per image; a Gaussian NLL has no floor at 0, so compare differences
    assert losses[-1] < losses[0] - 100, losses
    assert metrics["test/nelbo"] < losses[0]


def test_iwae_bound_below_nelbo_and_tightens_with_k(make_cfg, tmp_path):
    from aigc_cli.build import build_data
    from aigc_cli.store.runs import load_run

    train(make_cfg("trainer.max_steps=30", "trainer.eval_every=0"), run_dir=tmp_path)
    model, ckpt = load_run(tmp_path / "checkpoints" / "last.pt")
    x = next(build_data(ckpt["dataset"]["config"]).eval_iter(16))[0]
    torch.manual_seed(0)
    nelbo = torch.stack([sum(model.terms(x)) for _ in range(32)]).mean().item()
    bounds = {k: model.iwae_nll(x, k, chunk=5).mean().item() for k in (16, 256)}
    assert bounds[256] < bounds[16] < nelbo
    assert model.iwae_nll(x, 4).shape == (16,)


def test_iwae_with_one_sample_is_the_elbo():
    torch.manual_seed(0)
    model = VAE(VAE.Config(latent_dim=4, base_channels=8), DataSpec("image", [3, 32, 32])).eval()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        nelbo = torch.stack([sum(model.terms(x)) for _ in range(64)]).mean()
        k1 = model.iwae_nll(x.repeat(64, 1, 1, 1), 1).mean()
    assert k1.item() == pytest.approx(nelbo.item(), rel=1e-3)


def test_eval_reports_iwae_with_its_method(run_main, tmp_path):
    import json

    from .helpers import tiny_overrides

    code, _, err = run_main("train", *tiny_overrides(), "hydra.run.dir=run")
    assert code == 0, err
    assert "methods" in json.loads((tmp_path / "run" / "metrics.json").read_text())
    code, out, err = run_main("eval", "run=run", "iwae_k=8")
    assert code == 0, err
    assert "test/iwae_nll" in out
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["last"]
    assert record["test/iwae_nll"] <= record["test/nelbo"] + 5
    assert "k=8" in record["methods"]["test/iwae_nll"]
