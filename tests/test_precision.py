"""trainer.precision=auto: the rule (bf16 only where it pays), the probe leaving the run
untouched, the choice stored in the run, and bf16 training tracking fp32's."""

from __future__ import annotations

import torch

from aigc_cli.build import build_data, build_model
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.training import precision
from aigc_cli.training.loop import train

from .helpers import read_scalars


def _model(make_cfg, *extra, model="transformer"):
    cfg = make_cfg(*extra, model=model, dataset="pydoc" if model == "transformer" else "shapes")
    data = build_data(cfg.dataset)
    return build_model(cfg.model, data.spec), next(data.train_iter(4, 0))


BIG = ["model.n_layer=4", "model.n_embd=256", "model.n_head=4"]  # 3.2M parameters


def test_the_rule(make_cfg, monkeypatch):
    cpu = torch.device("cpu")
    small, _ = _model(make_cfg)
    big, big_batch = _model(make_cfg, *BIG)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    assert precision.choose_precision(big, lambda: big_batch, cpu)[0] == "32"  # no bf16 units
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX")

    def no_batch():
        raise AssertionError("a small model draws no probe batch")

    choice, why = precision.choose_precision(small, no_batch, cpu)
    assert choice == "32" and "under the 2M" in why  # small: no probe at all
    monkeypatch.setattr(precision, "probe", lambda *a: (2.0, 1.0))
    choice, why = precision.choose_precision(big, lambda: big_batch, cpu)
    assert choice == "bf16" and "2.00x" in why
    monkeypatch.setattr(precision, "probe", lambda *a: (1.0, 0.9))  # 1.11x: not enough
    assert precision.choose_precision(big, lambda: big_batch, cpu)[0] == "32"


def test_the_probe_changes_no_weight_and_no_random_stream(make_cfg):
    model, batch = _model(make_cfg, *BIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    fp32, bf16 = precision.probe(model, batch, torch.device("cpu"))
    assert fp32 > 0 and bf16 > 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_choice_is_stored_and_kept_on_resume(make_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX")
    monkeypatch.setattr(precision, "PROBE_MIN_PARAMS", 0)
    monkeypatch.setattr(precision, "probe", lambda *a: (3.0, 1.0))
    run = tmp_path / "run"
    train(make_cfg("trainer.precision=auto"), run_dir=run)
    assert "precision auto → bf16" in capsys.readouterr().out
    assert (
        load_checkpoint(run / "checkpoints" / "last.pt")["config"]["trainer"]["precision"] == "bf16"
    )
    monkeypatch.setattr(precision, "probe", lambda *a: (1.0, 3.0))  # would now pick fp32
    train(make_cfg("trainer.precision=auto", "trainer.max_steps=8"), resume=run)
    out = capsys.readouterr().out
    assert "precision auto → bf16: as chosen when the run started" in out


def test_bf16_loss_curve_stays_close_to_fp32(make_cfg, tmp_path):
    curves = {}
    for p in ("32", "bf16"):
        run = tmp_path / p
        train(make_cfg(f"trainer.precision={p}", "trainer.max_steps=40", "trainer.log_every=5",
                       "trainer.eval_every=0", "trainer.sample_every=0"), run_dir=run)  # fmt: skip
        curves[p] = [v for _, v in read_scalars(run)["model/loss"]]
    a, b = torch.tensor(curves["32"]), torch.tensor(curves["bf16"])
    assert a[-1] < 0.8 * a[0] and b[-1] < 0.8 * b[0]  # both learn
    assert ((a - b).abs() / a.abs()).max() < 0.05, (curves["32"], curves["bf16"])
    assert not torch.equal(a, b)  # bf16 did run: its rounding shows in the curve
