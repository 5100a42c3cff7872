"""Gradient accumulation: trainer.accumulate=N takes N micro-batches per optimizer step, and a
run with it ends at the weights of a run whose batches are N times larger (every family whose
nets have no BatchNorm, which sees each micro-batch alone; GAN stages included)."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.distributed.batchnorm import has_batchnorm
from aigc_cli.errors import ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.training import step as step_module
from aigc_cli.training.loop import train

from .helpers import KIND_DATA, SMALL

CASES = [("gan", "points"), ("diffusion", "points"), ("flow", "points"), ("vae", "image"),
         ("transformer", "image"), ("diffusion", "image"), ("classifier", "image")]  # fmt: skip


def _run(make_cfg, tmp_path, name, kind, batch, accumulate, *extra):
    dataset, data_args = KIND_DATA[kind]
    run = tmp_path / f"b{batch}x{accumulate}"
    dropout = ["model.dropout=0"] if name in ("diffusion", "flow", "classifier") else []
    cfg = make_cfg(*SMALL.get(name, []), *data_args, *dropout, "trainer.max_steps=3",
                   f"trainer.batch_size={batch}", f"trainer.accumulate={accumulate}",
                   "trainer.eval_every=0", "trainer.sample_every=0", "trainer.log_every=1",
                   *extra, model=name, dataset=dataset)  # fmt: skip
    metrics = train(cfg, run_dir=run)
    return load_checkpoint(run / "checkpoints" / "last.pt"), metrics


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}:{k}" for n, k in CASES])
def test_accumulated_micro_batches_equal_one_larger_batch(make_cfg, tmp_path, name, kind):
    big, _ = _run(make_cfg, tmp_path, name, kind, 16, 1)
    small, _ = _run(make_cfg, tmp_path, name, kind, 4, 4)
    assert small["step"] == big["step"] == 3
    for k, v in big["model_state"].items():
        assert torch.allclose(small["model_state"][k].float(), v.float(), atol=2e-5, rtol=1e-4), k
    # the optimizer's moments too (Adam's step alone would not see a wrong gradient scale)
    a, b = big["optimizers"], small["optimizers"]
    for opt in a:
        scale = max(float(s["exp_avg"].abs().max()) for s in a[opt]["state"].values())
        for i, s in a[opt]["state"].items():
            assert torch.allclose(b[opt]["state"][i]["exp_avg"], s["exp_avg"], rtol=1e-3,
                                  atol=1e-5 * scale), opt  # fmt: skip


def test_batchnorm_models_are_the_ones_left_out(make_cfg):
    """The cases above are exactly the families whose nets there have no BatchNorm."""
    from aigc_cli.build import build_data, build_model

    for name, kind in CASES:
        dataset, data_args = KIND_DATA[kind]
        cfg = make_cfg(*SMALL.get(name, []), *data_args, model=name, dataset=dataset)
        model = build_model(cfg.model, build_data(cfg.dataset).spec)
        assert not has_batchnorm(model), name


def test_ranks_average_once_per_stage_not_per_micro_batch(make_cfg, tmp_path, monkeypatch):
    calls = []
    average = step_module.distributed.average_gradients

    def counted(params, world):
        calls.append(1)
        average(params, world)

    monkeypatch.setattr(step_module.distributed, "average_gradients", counted)
    _run(make_cfg, tmp_path, "gan", "points", 4, 4)
    assert len(calls) == 3 * 2  # 3 steps × (D stage + G stage), not × 4 micro-batches


def test_accumulate_below_one_is_one_line(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.accumulate.*0 must be >= 1"):
        _run(make_cfg, tmp_path, "vae", "image", 8, 0)
