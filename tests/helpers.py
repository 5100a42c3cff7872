"""What the tests share: tiny configs, running the CLI as a user does, reading a run's
TensorBoard events and checkpoints, two ranks in forked processes, a free loopback port."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small enough that a whole run takes a second or two on a laptop CPU.
TINY = [
    "trainer.max_steps=6",
    "trainer.batch_size=8",
    "trainer.log_every=2",
    "trainer.eval_every=3",
    "trainer.sample_every=3",
    "trainer.ckpt_every=3",
    "trainer.num_samples=8",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.eval_samples=200",
]
TINY_DATA = {
    "shapes": ["dataset.train_size=64", "dataset.test_size=16"],
    "gaussians": ["dataset.train_size=256", "dataset.test_size=64"],
}
TINY_MODEL = {
    "vae": ["model.latent_dim=4", "model.base_channels=8", "model.max_channels=16"],
    "classifier": ["model.base_channels=8", "model.max_channels=16", "model.feature_dim=32"],
}


def tiny_overrides(model: str = "vae", dataset: str = "shapes") -> list[str]:
    return [
        f"model={model}",
        f"dataset={dataset}",
        *TINY,
        *TINY_DATA.get(dataset, []),
        *TINY_MODEL.get(model, []),
    ]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`python -m aigc_cli ...` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [sys.executable, "-m", "aigc_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_tags(run_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags()


def checkpoint(run_dir: Path, which: str = "last") -> dict[str, Any]:
    """A run's checkpoint (last, best or step_NNNNNNN), loaded as aigc loads it."""
    from aigc_cli.store.checkpoint import load_checkpoint
    from aigc_cli.store.rundir import RunDir

    return load_checkpoint(RunDir(run_dir).checkpoint(which))


def tiny_model(name: str, spec: Any, **config: Any) -> Any:
    """A registered model built from its registry name and a DataSpec, as the builder does."""
    from aigc_cli.build import build_model

    return build_model({"name": name, **config}, spec)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forked_rank(
    rank: int, port: int, cfg: Any, run_dir: Path, poison: tuple[str, int, int] | None
) -> None:
    """One rank in a forked child: the env torchrun would give it, then the library's train();
    `poison` = (model, step, rank): that rank's last stage of that step gets a NaN loss."""
    if poison is not None:
        from aigc_cli.registry import MODELS

        name, step, bad_rank = poison
        Recorder(MODELS.get(name).obj, step, nan_rank=bad_rank)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)  # as DataLoader workers do after a fork
    from aigc_cli.training.loop import train

    train(cfg, run_dir=run_dir)


def two_ranks(
    cfg: Any, run_dir: Path, timeout: float = 900, poison: tuple[str, int, int] | None = None
) -> None:
    """Train `cfg` on two gloo ranks, forked from a fork server that imported torch once: no new
    interpreter per rank, and nothing of this process along (a torch.compile of an earlier test
    leaves autograd threads that a plain fork cannot take)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tests.helpers"])
    port = free_port()
    procs = [ctx.Process(target=_forked_rank, args=(r, port, cfg, run_dir, poison))
             for r in (0, 1)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]


# The data each kind trains on here, kept tiny.
KIND_DATA = {
    "image": ("shapes", ["dataset.image_size=16", "dataset.channels=1"]),
    "points": ("gaussians", []),
    "text": ("pydoc", ["dataset.block_size=16"]),
    "frames": (
        "tunes",
        ["dataset.representation=frames", "dataset.window=16", "dataset.pieces=40"],
    ),
}
# Small sizes of the families that have them; a family not listed trains at its defaults.
SMALL = {
    "diffusion": [
        "model.base_channels=8",
        "model.timesteps=50",
        "model.steps=2",
        "model.hidden=32",
    ],
    "flow": ["model.base_channels=8", "model.steps=2", "model.hidden=32"],
    "gan": ["model.g_channels=8", "model.d_channels=8", "model.hidden=32", "model.latent_dim=8"],
    "frames": ["model.n_layer=1", "model.n_embd=32", "model.n_head=2"],
    "transformer": [
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.levels=2",
        "model.downscale=2",
    ],
}


# Families that need a particular dataset of their kind (the reader reads captioned scenes).
CAPTIONED = ("captioned_shapes", ["dataset.image_size=16", "dataset.train_size=64",
                                  "dataset.test_size=16"])  # fmt: skip
FAMILY_DATA = {"reader": CAPTIONED}

FOLDER_COLOURS = {"red": (230, 30, 30), "green": (30, 220, 40), "blue": (40, 80, 250)}


def caption_folder(root: Path | None = None, n: int = 48) -> Path:
    """A folder of `n` drawn scenes with captions in both layouts people use: the first half a
    .txt beside each image, the second half in sub/metadata.jsonl. Each caption names its
    image's colour ("a red square"), which the tests check each batch against. Without `root`
    it is one folder per test session under the temp dir, written once (atomically)."""
    from PIL import Image, ImageDraw

    if root is None:
        root = Path(tempfile.gettempdir()) / f"aigc-test-caption-folder-v1-{n}"
        if root.is_dir():
            return root
    work = Path(tempfile.mkdtemp(dir=root.parent, prefix=".captions-"))
    (work / "sub").mkdir()
    rows = []
    for i in range(n):
        colour = list(FOLDER_COLOURS)[i % 3]
        shape = ("square", "circle")[(i // 3) % 2]
        im = Image.new("RGB", (24, 24))
        box = (4 + i % 5, 4, 18 + i % 5, 18)
        draw = ImageDraw.Draw(im)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=FOLDER_COLOURS[colour])
        caption = f"a {colour} {shape}"
        if i < n // 2:
            im.save(work / f"img{i:03d}.png")
            (work / f"img{i:03d}.txt").write_text(caption + "\n")
        else:
            im.save(work / "sub" / f"img{i:03d}.png")
            rows.append(json.dumps({"file_name": f"img{i:03d}.png", "text": caption}))
    (work / "sub" / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    try:
        work.rename(root)
    except OSError:  # another process wrote it first
        shutil.rmtree(work, ignore_errors=True)
    return root


def data_of(family: str, kind: str) -> tuple[str, list[str]]:
    """The tiny dataset (name, overrides) a family trains on for a data kind in the tests."""
    return FAMILY_DATA.get(family, KIND_DATA[kind])


def model_kinds() -> list[tuple[str, str]]:
    from aigc_cli.registry import MODELS

    return [(name, kind) for name in MODELS.names() for kind in MODELS.get(name).obj.data_kinds]


class Recorder:
    """Wraps the family's training_step: records each stage's loss per step (the hand
    reference for the logged means) and forces a NaN loss where the cell asks for one."""

    def __init__(self, cls: type, nan_step: int | None, nan_rank: int | None = None) -> None:
        self.losses: list[tuple[int, str, float]] = []
        self.cls, self.original = cls, cls.training_step
        recorder = self

        from aigc_cli.noise import LOCAL

        def training_step(model, batch, step, noise=LOCAL):
            bad = step == nan_step and (nan_rank is None or noise.rank == nan_rank)
            # Stages are drawn one at a time (a GAN's G stage needs D's update first); the
            # last stage is poisoned: a GAN's G, after D has stepped, or the only one.
            for stage in recorder.original(model, batch, step, noise):
                if bad and stage.opt_name != "disc":
                    stage.loss = stage.loss * float("nan")
                logged = stage.scalars.get("loss", stage.loss)
                recorder.losses.append((step, stage.opt_name, float(logged.detach())))
                yield stage

        cls.training_step = training_step

    def restore(self) -> None:
        self.cls.training_step = self.original

    def means(self, every: int, steps: int, skipped: set[int]) -> dict[str, dict[int, float]]:
        """Hand-computed means of `<opt>/loss` over each logging window."""
        out: dict[str, dict[int, float]] = {}
        for end in range(every, steps + 1, every):
            window = [
                (o, v) for s, o, v in self.losses if end - every <= s < end and s not in skipped
            ]
            for opt in {o for o, _ in window}:
                vals = [v for o, v in window if o == opt]
                out.setdefault(f"{opt}/loss", {})[end] = sum(vals) / len(vals)
        return out
