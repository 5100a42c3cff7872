"""The training loop's mechanics: gradient norms, the memory layout of conv nets, and the
progress bar's redraws."""

import itertools

import torch

from aigc_cli.training.loop import train

from .helpers import read_scalars


def test_grad_norm_logged_is_the_logged_steps_own(make_cfg, tmp_path):
    """Without clipping, the norm is taken only on the steps that are logged, and it is that
    step's norm: logging every 2 steps reports, at each logged step, the value that logging
    every step reports there."""
    common = ["trainer.max_steps=6", "trainer.deterministic=true"]
    train(make_cfg(*common, "trainer.log_every=1"), run_dir=tmp_path / "every")
    train(make_cfg(*common, "trainer.log_every=2"), run_dir=tmp_path / "sparse")
    every = dict(read_scalars(tmp_path / "every")["model/grad_norm"])
    sparse = read_scalars(tmp_path / "sparse")["model/grad_norm"]
    assert [s for s, _ in sparse] == [2, 3, 4, 6]  # log_every=2, plus step 3 (eval/ckpt_every=3)
    for step, value in sparse:
        assert value > 0 and abs(value - every[step]) <= 1e-5 * every[step], step


def test_total_norm_matches_clip_grad_norm_and_leaves_grads_alone():
    from aigc_cli.training.step import total_norm

    torch.manual_seed(0)
    grads = [torch.randn(3, 4), torch.randn(5)]
    before = [g.clone() for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    assert torch.allclose(total_norm(grads), expected)
    assert all(torch.equal(a, b) for a, b in zip(grads, before, strict=True))


def test_channels_last_run_trains_like_the_contiguous_one(make_cfg, tmp_path):
    """trainer.channels_last changes the memory layout, not the maths: same losses and weights
    (to float rounding), and the checkpoint loads into a plain contiguous model."""
    common = ["trainer.max_steps=4", "trainer.log_every=1", "trainer.deterministic=true"]
    train(make_cfg(*common, "trainer.channels_last=false"), run_dir=tmp_path / "plain")
    train(make_cfg(*common, "trainer.channels_last=true"), run_dir=tmp_path / "nhwc")
    a = read_scalars(tmp_path / "plain")["model/loss"]
    b = read_scalars(tmp_path / "nhwc")["model/loss"]
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (_, va), (_, vb) in zip(a, b, strict=True):
        assert abs(va - vb) <= 1e-3 * abs(va)
    ckpt = torch.load(tmp_path / "nhwc" / "checkpoints" / "last.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain" / "checkpoints" / "last.pt", weights_only=True)
    for key, value in ckpt["model_state"].items():
        torch.testing.assert_close(value, plain["model_state"][key], rtol=1e-3, atol=1e-5)
    kernels = [v for v in ckpt["model_state"].values() if v.dim() == 4 and v.shape[-1] > 1]
    assert kernels and all(not v.is_contiguous() for v in kernels)  # NHWC really was used
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in kernels)


def test_memory_format_is_channels_last_only_for_conv_nets_where_asked():
    from torch import nn

    from aigc_cli.training.loop import memory_format, to_device

    conv, mlp, cpu = (
        nn.Sequential(nn.Conv2d(3, 4, 3)),
        nn.Sequential(nn.Linear(3, 4)),
        torch.device("cpu"),
    )
    assert memory_format(conv, cpu, None) is torch.contiguous_format  # default: CUDA only
    assert memory_format(conv, torch.device("cuda"), None) is torch.channels_last
    assert memory_format(conv, cpu, True) is torch.channels_last
    assert memory_format(conv, torch.device("cuda"), False) is torch.contiguous_format
    assert memory_format(mlp, cpu, True) is torch.contiguous_format
    x = to_device(torch.randn(2, 3, 5, 5), cpu, torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    labels = to_device(torch.arange(2), cpu, torch.channels_last)
    assert labels.shape == (2,)


def test_progress_bar_redraws_at_most_twice_a_second_but_always_on_new_figures(
    tmp_path, monkeypatch
):
    """A redraw costs milliseconds of the training thread in a terminal: plain steps redraw
    only when half a second has passed; a step that brings new loss/rate figures always does."""
    from aigc_cli.training import logger

    now = [100.0]
    monkeypatch.setattr(logger.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(logger.console, "_force_terminal", True)  # the bar is for terminals
    log = logger.RunLogger(tmp_path, progress=True)
    log.start_progress(total=1000)
    draws = []
    monkeypatch.setattr(log._progress, "refresh", lambda: draws.append(now[0]))
    for step in range(1, 41):  # 40 steps of 0.05 s: 2 s
        now[0] += 0.05
        log.advance(step)
    assert len(draws) == 4 and all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(draws))
    log.advance(41, loss="1.0", rate="10")  # 0.05 s after the last draw, but new figures
    assert len(draws) == 5
    assert log._progress.tasks[0].completed == 41
    log.stop_progress()
    log.close()


def test_trainer_tf32_sets_cudas_maths_both_ways():
    """trainer.tf32 is applied on CUDA runs (the flags are plain globals, so set them here)."""
    from aigc_cli.training.loop import cuda_math

    b = torch.backends
    saved = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark
    try:
        for flag in (False, True, False):
            cuda_math(flag)
            assert torch.backends.cuda.matmul.allow_tf32 is flag
            assert torch.backends.cudnn.allow_tf32 is flag
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = saved
