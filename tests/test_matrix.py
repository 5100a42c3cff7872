"""The combination matrix: every registered model × every data kind it trains on × every loop
feature (precision, compile, EMA, a forced non-finite step under skip, resume mid-run, two
ranks). Models and their data kinds are read from the registry, so a new family joins by
itself. A pairwise covering selection runs in the fast suite; the whole product is slow.

Every cell asserts behaviour, against an independent reference:
- the scalars TensorBoard holds equal the means of the per-step losses the model yielded,
  computed here by hand (skipped steps left out);
- a forced non-finite step changes no weight, no optimizer state and no EMA, on every rank;
- a run stopped mid-way and resumed ends bitwise at the unbroken run's weights;
- two forked gloo ranks end at the weights of one process with the same global batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from aigc_cli.registry import MODELS

from .helpers import (
    CAPTIONED,
    KIND_DATA,
    SMALL,
    Recorder,
    caption_folder,
    checkpoint,
    data_of,
    model_kinds,
    read_scalars,
    two_ranks,
)

FACTORS: dict[str, list[Any]] = {
    "precision": ["32", "bf16", "16"],
    "compile": [False, True],
    "ema": [False, True],
    "nonfinite": [False, True],
    "resume": [False, True],
    "ranks": [1, 2],
}
STEPS = 4
BAD_STEP = 2  # the 0-based step whose last stage's loss is forced to NaN


def pairwise(factors: dict[str, list[Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A covering set of cells: every pair of values of any two factors appears in at least
    one cell (greedy, as AETG builds covering arrays)."""
    names = list(factors)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(names, 2)
        for va in factors[a]
        for vb in factors[b]
    }
    rng, cells = random.Random(seed), []

    def gain(cell: dict[str, Any]) -> int:
        return sum(
            (a, cell[a], b, cell[b]) in uncovered for a, b in itertools.combinations(names, 2)
        )

    while uncovered:
        a, va, b, vb = min(uncovered, key=repr)
        best = None
        for _ in range(60):
            cell = {n: rng.choice(factors[n]) for n in names} | {a: va, b: vb}
            if best is None or gain(cell) > gain(best):
                best = cell
        cells.append(best)
        uncovered -= {(x, best[x], y, best[y]) for x, y in itertools.combinations(names, 2)}
    return cells


def cell_id(cell: dict[str, Any]) -> str:
    flags = [k for k in ("compile", "ema", "nonfinite", "resume") if cell[k]]
    if cell.get("accumulate", 1) > 1:
        flags.append(f"acc{cell['accumulate']}")
    return "-".join([cell["model"], cell["precision"], *flags, f"r{cell['ranks']}"])


# Settings of a family that change what runs in the loop (another backbone, another head),
# each a row of the matrix of its own: "family@variant".
VARIANTS: dict[str, list[str]] = {
    "frames@ordered_lstm": ["model.backbone=lstm", "model.notes=ordered"],
    "frames@pitch_window": ["model.backbone=lstm", "model.pitch_window=2"],
    "frames@ensemble": [
        "model.backbone=lstm",
        "model.n_layer=1",
        "model.members=[{weight_drop: 0.5, notes: voices},{pitch_window: 2, pitch_frames: 8}]",
    ],
    "frames@voice_notes": ["model.notes=voices", "model.pitch_window=2"],
    "diffusion@text": ["model.text=true", "model.text_width=16", "model.text_layers=1"],
    "flow@text": ["model.text=true", "model.text_width=16", "model.text_layers=1"],
    "flow@caption_folder": ["model.text=true", "model.text_width=16", "model.text_layers=1"],
    "frames@voices": [],  # the data differ: four voices side by side (VARIANT_DATA)
}


def folder_data() -> tuple[str, list[str]]:
    """Users' captioned files, written once a session when a cell first needs them."""
    return "caption_folder", [f"dataset.path={caption_folder()}", "dataset.image_size=16",
                              "dataset.test_fraction=0.25", "dataset.workers=0"]  # fmt: skip


def voices_data() -> tuple[str, list[str]]:
    name, args = KIND_DATA["frames"]
    return name, [*args, "dataset.representation=voices"]  # the later override wins


# The data kind and data a variant needs instead of its kind's (text-to-image reads captions;
# four-part music keeps its voices).
VARIANT_DATA = {"diffusion@text": ("image", lambda: CAPTIONED),
                "flow@text": ("image", lambda: CAPTIONED),
                "flow@caption_folder": ("image", folder_data),
                "frames@voices": ("frames", voices_data)}  # fmt: skip


def model_rows() -> list[str]:
    """ "family[@variant]:kind" for every family, each data kind it takes, and its variants."""
    rows = [f"{m}:{k}" for m, k in model_kinds()]
    for variant in VARIANTS:
        family = variant.split("@")[0]
        rows += [f"{variant}:{k}" for m, k in model_kinds()
                 if m == family and k == VARIANT_DATA.get(variant, (k,))[0]]  # fmt: skip
    return rows


def family(cell: dict[str, Any]) -> str:
    return cell["model"].split(":")[0].split("@")[0]


def all_cells() -> list[dict[str, Any]]:
    combos = [dict(zip(FACTORS, v, strict=True)) for v in itertools.product(*FACTORS.values())]
    return [{"model": row, **c} for row in model_rows() for c in combos]


# Factors the covering set pairs with all the others, but the full product leaves at their
# first value (it would double with each).
PAIRWISE_ONLY: dict[str, list[Any]] = {"accumulate": [1, 2]}


def covering_cells() -> list[dict[str, Any]]:
    return pairwise({"model": model_rows(), **FACTORS, **PAIRWISE_ONLY})


def compose(make_cfg, cell: dict[str, Any], *extra: str, steps: int = STEPS):
    """The cell's config: the tiny test config of its model and data, and its features."""
    row, kind = cell["model"].split(":")
    data = VARIANT_DATA.get(row, (kind, lambda: data_of(family(cell), kind)))[1]
    dataset, data_args = data()
    return make_cfg(*overrides(cell, steps), *data_args, *extra, model=family(cell),
                    dataset=dataset)  # fmt: skip


def overrides(cell: dict[str, Any], steps: int = STEPS) -> list[str]:
    name = family(cell)
    return [
        *SMALL.get(name, []),
        *VARIANTS.get(cell["model"].split(":")[0], []),
        *_no_dropout(name, cell["ranks"]),
        f"trainer.max_steps={steps}",
        "trainer.log_every=2",
        "trainer.eval_every=0",
        "trainer.sample_every=0",
        # A non-finite cell keeps every step's checkpoint, to compare those around the bad step
        # (each checkpoint also flushes the scalars); the others log means over 2 steps.
        f"trainer.ckpt_every={1 if cell['nonfinite'] else 2}",
        "trainer.keep_checkpoints=10",
        "trainer.eval_samples=64",
        "trainer.batch_size=8",
        f"trainer.precision={cell['precision']}",
        f"trainer.compile={str(cell['compile']).lower()}",
        "trainer.compile_backend=aot_eager",  # dynamo + AOT autograd, without inductor's codegen
        f"trainer.ema={str(cell['ema']).lower()}",
        f"trainer.on_nonfinite={'skip' if cell['nonfinite'] else 'stop'}",
        f"trainer.accumulate={cell.get('accumulate', 1)}",
    ]


def _no_dropout(name: str, ranks: int) -> list[str]:
    """Two-rank cells train without dropout, for any model whose Config has it: its masks are
    drawn per rank (as under DDP), so unlike the noise models draw through `Noise` they differ
    between one process and two ranks. One-rank cells keep the model's dropout."""
    fields = {f.name for f in dataclasses.fields(MODELS.get(name).config)}
    return ["model.dropout=0"] if ranks == 2 and "dropout" in fields else []


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def run_cell(cell: dict[str, Any], make_cfg, tmp_path: Path) -> None:
    from aigc_cli.training.loop import train

    name = family(cell)
    cls = MODELS.get(name).obj
    nan_step = BAD_STEP if cell["nonfinite"] else None
    cfg = compose(make_cfg, cell)
    rec = Recorder(cls, nan_step)
    try:
        full = tmp_path / "full"
        train(cfg, run_dir=full)
        skipped = {BAD_STEP} if cell["nonfinite"] else set()
        # The logged means are the hand-computed ones.
        logged = read_scalars(full)
        window = 1 if cell["nonfinite"] else 2
        for tag, by_step in rec.means(window, STEPS, skipped).items():
            got = dict(logged[tag])
            for step, value in by_step.items():
                assert got[step] == pytest.approx(value, rel=1e-5, abs=1e-6), (tag, step)
            if cell["nonfinite"]:
                assert BAD_STEP + 1 not in got  # the skipped step logs no loss
        if cell["nonfinite"]:
            _check_skip(full, logged)
        if cell["resume"]:
            part = tmp_path / "part"
            train(compose(make_cfg, cell, steps=STEPS // 2), run_dir=part)
            train(cfg, resume=part)
            a, b = checkpoint(full), checkpoint(part)
            assert a["step"] == b["step"] == STEPS
            assert _equal(a["model_state"], b["model_state"])
            if cell["ema"]:
                assert _equal(a["ema"]["weights"], b["ema"]["weights"])
        if cell["ranks"] == 2:
            # the NaN now comes from rank 1 alone: rank 0 must skip with it
            poison = (name, nan_step, 1) if nan_step is not None else None
            two = tmp_path / "two"
            two_ranks(cfg, two, poison=poison)
            a, b = checkpoint(full), checkpoint(two)
            # Half-precision sums over 4 samples and over 8 round differently.
            tol = 1e-4 if cell["precision"] == "32" else 2e-2
            for k, v in a["model_state"].items():
                assert torch.allclose(v.float(), b["model_state"][k].float(), rtol=1e-3,
                                      atol=tol), k  # fmt: skip
            if cell["nonfinite"]:
                _check_skip(two, read_scalars(two))
    finally:
        rec.restore()


def _check_skip(run_dir: Path, logged: dict) -> None:
    """The step with the NaN loss changed nothing: step_N.pt before and after it agree."""
    before = checkpoint(run_dir, f"step_{BAD_STEP:07d}")
    after = checkpoint(run_dir, f"step_{BAD_STEP + 1:07d}")
    assert _equal(before["model_state"], after["model_state"])
    if before["ema"]:
        assert _equal(before["ema"]["weights"], after["ema"]["weights"])
    for k, opt in before["optimizers"].items():
        for pid, st in opt["state"].items():
            for key, v in st.items():
                assert torch.equal(v, after["optimizers"][k]["state"][pid][key]), (k, key)
    assert dict(logged["train/skipped_steps"])[STEPS] == 1.0


@pytest.mark.parametrize("cell", covering_cells(), ids=cell_id)
def test_covering_cell(cell, make_cfg, tmp_path):
    run_cell(cell, make_cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.full
@pytest.mark.parametrize("cell", all_cells(), ids=cell_id)
def test_every_cell(cell, make_cfg, tmp_path):
    run_cell(cell, make_cfg, tmp_path)


def test_covering_set_covers_every_pair():
    factors = {"model": model_rows(), **FACTORS}
    cells = covering_cells()
    for a, b in itertools.combinations(factors, 2):
        seen = {(c[a], c[b]) for c in cells}
        assert seen == set(itertools.product(factors[a], factors[b])), (a, b)
    assert len(cells) < math.prod(len(v) for v in factors.values()) / 10


@pytest.mark.parametrize("model_kind", model_rows())
def test_loss_falls_on_a_fixed_batch(model_kind, make_cfg):
    """A few steps on one fixed batch lower the first stage's loss (the model can learn
    through the loop's mechanics)."""
    from aigc_cli.build import build_data, build_model
    from aigc_cli.config import validate_optim
    from aigc_cli.noise import Noise
    from aigc_cli.training.step import Optimization, train_step

    cell = {"model": model_kind, **{k: v[0] for k, v in FACTORS.items()}}
    cfg = compose(make_cfg, cell, "optim.lr=3e-3", "optim.warmup_steps=0")
    torch.manual_seed(0)
    data = build_data(cfg.dataset)
    model = build_model(cfg.model, data.spec)
    opts = model.optimizers(validate_optim(cfg.optim))
    opt = Optimization(opts, {}, torch.amp.GradScaler("cpu", enabled=False), None, "cpu")
    batch = next(data.train_iter(16, 0))
    first = []
    for step in range(12):
        torch.manual_seed(step % 2)  # the same noise draws, so only the weights change
        result = train_step(model, batch, step, opt, Noise())
        first.append(float(next(iter(result.scalars.values()))))
    assert sum(first[-3:]) / 3 < sum(first[:3]) / 3, first
