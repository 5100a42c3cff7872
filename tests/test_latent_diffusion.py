"""Latent diffusion: a denoiser on a trained VAE's latents. The run's checkpoint carries the
frozen VAE, so sampling, evaluation and resuming need nothing but the run."""

from __future__ import annotations

import shutil

import pytest
import torch

from aigc_cli.build import load_run
from aigc_cli.checkpoint import load_checkpoint
from aigc_cli.errors import ConfigError
from aigc_cli.train import train

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
    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert model.latent_shape == [4] and model.last_nfe == 5
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
