"""Latent diffusion: a denoiser on a trained VAE's latents. The run's checkpoint carries the
frozen VAE, so sampling, evaluation and resuming need nothing but the run."""

from __future__ import annotations

import shutil

import pytest
import torch

from aigc_cli.errors import ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.store.runs import load_run
from aigc_cli.training.loop import train

SMALL = ["model.hidden=32", "model.timesteps=50", "model.steps=5", "trainer.max_steps=4"]


@pytest.fixture
def vae_run(make_cfg, tmp_path):
    run = tmp_path / "vae"
    train(make_cfg("trainer.max_steps=4"), run_dir=run)
    return run


def test_latent_diffusion_needs_nothing_but_its_run(make_cfg, tmp_path, vae_run):
    ldm = tmp_path / "ldm"
    cfg = make_cfg(*SMALL, f"model.autoencoder={vae_run}", model="diffusion")
    train(cfg, run_dir=ldm)
    vae_state = load_checkpoint(vae_run / "checkpoints" / "last.pt")["model_state"]
    ckpt = load_checkpoint(ldm / "checkpoints" / "last.pt")
    for k, v in vae_state.items():  # the frozen VAE, unchanged, inside the checkpoint
        assert torch.equal(ckpt["model_state"][f"vae.{k}"], v), k
    shutil.rmtree(vae_run)  # from here on only the latent-diffusion run exists
    model, _ = load_run(ldm / "checkpoints" / "last.pt")
    result = model.sample(6, generator=torch.Generator().manual_seed(0))
    images = result.images
    assert images.shape == (6, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert model.latent_shape == [4] and result.nfe == 5
    train(make_cfg(*SMALL, "trainer.max_steps=6", f"model.autoencoder={vae_run}",
                   f"resume={ldm}", model="diffusion"))  # fmt: skip
    assert load_checkpoint(ldm / "checkpoints" / "last.pt")["step"] == 6


def test_autoencoder_must_be_a_vae_of_the_same_shape(make_cfg, tmp_path, vae_run):
    with pytest.raises(ConfigError, match="VAE was trained on \\[3, 32, 32\\] data"):
        train(make_cfg(*SMALL, "dataset.image_size=16", f"model.autoencoder={vae_run}",
                       model="diffusion"), run_dir=tmp_path / "a")  # fmt: skip
    gan = tmp_path / "gan"
    train(make_cfg("trainer.max_steps=2", "model.g_channels=8", "model.d_channels=8",
                   model="gan"), run_dir=gan)  # fmt: skip
    with pytest.raises(ConfigError, match="is a run of model 'gan', not a VAE"):
        train(make_cfg(*SMALL, f"model.autoencoder={gan}", model="diffusion"),
              run_dir=tmp_path / "b")  # fmt: skip


def test_latents_are_encoded_once_and_train_as_per_batch_encoding(make_cfg, tmp_path, vae_run,
                                                                   monkeypatch):  # fmt: skip
    """The training images pass through the encoder once, before the first step; the run then
    ends at the weights of a run that encodes every batch as it comes."""
    from aigc_cli.models.base import GenerativeModel
    from aigc_cli.models.denoising import DenoisingModel
    from aigc_cli.models.vae import VAE

    cfg = make_cfg(*SMALL, "trainer.max_steps=6", "trainer.ema=false", "trainer.eval_every=0",
                   "trainer.sample_every=0",
                   f"model.autoencoder={vae_run}", model="diffusion")  # fmt: skip
    encoded = []
    encode = VAE.encode
    monkeypatch.setattr(VAE, "encode", lambda self, x: (encoded.append(len(x)), encode(self, x))[1])
    train(cfg, run_dir=tmp_path / "once")
    test = cfg.dataset.test_size  # the final evaluation encodes the test split
    assert encoded[0] == cfg.dataset.train_size and sum(encoded[1:]) == test
    monkeypatch.setattr(DenoisingModel, "train_batches", GenerativeModel.train_batches)
    encoded.clear()
    train(cfg, run_dir=tmp_path / "per_batch")
    assert encoded[:6] == [cfg.trainer.batch_size] * 6 and sum(encoded[6:]) == test
    a = load_checkpoint(tmp_path / "once" / "checkpoints" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "per_batch" / "checkpoints" / "last.pt")["model_state"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
