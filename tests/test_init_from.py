"""Fine-tuning with init_from: a new run (step 0, fresh optimizer, its own data) starts from
another run's weights; what does not fit is listed and keeps its initial values."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.commands.export import run_export
from aigc_cli.errors import ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.training.loop import train

FROZEN = ["optim.lr=1e-30", "trainer.max_steps=1", "trainer.ema=false"]  # a step moves nothing


def _state(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_a_new_run_starts_from_the_sources_ema_weights(make_cfg, tmp_path, capsys):
    src = tmp_path / "src"
    train(make_cfg("trainer.ema=true", "trainer.ema_decay=0.5"), run_dir=src)
    ema = _state(src)["ema"]["weights"]
    tuned = tmp_path / "tuned"
    train(make_cfg(*FROZEN, "dataset.seed=7", f"init_from={src}"), run_dir=tuned)
    out = capsys.readouterr().out
    assert f"initialised from {src / 'checkpoints' / 'last.pt'}: 20 of 20 tensors" in out
    after = _state(tuned)
    assert after["step"] == 1  # a new run, not a resumed one
    for k, v in ema.items():
        assert torch.allclose(after["model_state"][k], v), k
    # from an export folder, the same
    out = run_export({"run": str(src), "out": str(tmp_path / "export")})
    train(make_cfg(*FROZEN, f"init_from={out}"), run_dir=tmp_path / "from_export")
    for k, v in ema.items():
        assert torch.allclose(_state(tmp_path / "from_export")["model_state"][k], v), k
    # a resumed run keeps its own weights: init_from is not applied again
    train(make_cfg(*FROZEN, "trainer.max_steps=2", f"init_from={src}", f"resume={tuned}"))
    assert "init_from is ignored" in capsys.readouterr().out


def test_tensors_that_do_not_fit_are_listed_and_keep_their_initial_values(make_cfg, tmp_path,
                                                                          capsys):  # fmt: skip
    src = tmp_path / "src"
    train(make_cfg("model.latent_dim=4"), run_dir=src)
    train(make_cfg(*FROZEN, "model.latent_dim=6", f"init_from={src}"), run_dir=tmp_path / "b")
    out = " ".join(capsys.readouterr().out.split())
    assert "left at their initial values (shape differs):" in out
    before, after = _state(src)["model_state"], _state(tmp_path / "b")["model_state"]
    same = [k for k in after if after[k].shape == before[k].shape]
    assert same and all(torch.allclose(after[k], before[k]) for k in same)
    with pytest.raises(ConfigError, match="is a run of model 'vae'; this run trains 'gan'"):
        train(make_cfg(f"init_from={src}", "model.g_channels=8", model="gan"),
              run_dir=tmp_path / "c")  # fmt: skip
    with pytest.raises(ConfigError, match=r"no tensor of .* fits this model"):
        train(make_cfg(f"init_from={src}", "model.arch=mlp", "model.hidden=16",
                       "model.latent_dim=3"), run_dir=tmp_path / "d")  # fmt: skip


def test_character_embeddings_follow_their_characters_to_a_new_text(make_cfg, tmp_path,
                                                                      capsys):  # fmt: skip
    """Shakespeare → another text: the new text's vocabulary orders characters differently;
    each character's learnt row moves with it, unseen characters start afresh."""
    from aigc_cli.data.text import CharTokenizer

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("abcdefgh " * 400)
    second.write_text("hgf!edcba " * 400)  # "!" is new and sorts before the letters: they move up
    small = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "dataset.block_size=8"]
    train(make_cfg(*small, "dataset=text", f"dataset.path={first}", model="transformer",
                   dataset="text"), run_dir=tmp_path / "src")  # fmt: skip
    train(make_cfg(*small, *FROZEN, "dataset=text", f"dataset.path={second}",
                   f"init_from={tmp_path / 'src'}", model="transformer", dataset="text"),
          run_dir=tmp_path / "tuned")  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert "9 carried over, 1 new characters start afresh" in out
    src, tuned = _state(tmp_path / "src"), _state(tmp_path / "tuned")
    old = CharTokenizer(src["dataset"]["spec"]["tokenizer"]["chars"]).stoi
    new = CharTokenizer(tuned["dataset"]["spec"]["tokenizer"]["chars"]).stoi
    a, b = src["model_state"]["gpt.wte.weight"], tuned["model_state"]["gpt.wte.weight"]
    for c in "abcdefgh ":
        assert torch.allclose(b[new[c]], a[old[c]]), c
    assert torch.equal(tuned["model_state"]["gpt.head.weight"], b)  # still tied
