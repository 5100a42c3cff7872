"""The samples a run logs as it trains, drawn from a fixed seed so the grids of successive steps
are comparable: the result's own writer puts them in samples/ and TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aigc_cli.config import TrainerConfig
from aigc_cli.data.music import music_spec
from aigc_cli.errors import ConfigError
from aigc_cli.results import Images, Music, Points, SampleResult, Texts
from aigc_cli.results.images import to_grid
from aigc_cli.results.music import PIECES
from aigc_cli.store.rundir import RunDir
from aigc_cli.training.logger import RunLogger

TEXT_TOKENS = 300  # tokens of each of the two logged text samples
GRID_ROW = 8  # images per grid row, unless the model lays its grid out (one row per class)


def log_samples(
    log: RunLogger, model: Any, data: Any, t: TrainerConfig, seed: int, step: int, run_dir: Path
) -> None:
    g = torch.Generator().manual_seed(seed)
    if data.spec.kind == "text":
        result = model.sample(2, generator=g, max_new_tokens=TEXT_TOKENS)
    elif music_spec(data.spec) is not None:
        result = model.sample(min(t.num_samples, PIECES), generator=g)
    else:
        result = model.sample(t.num_samples, generator=g)
    if not isinstance(result, SampleResult):
        raise ConfigError(
            f"model '{model.cfg.name}': sample() returned a {type(result).__name__}, not a "
            "sample result",
            hint="return self.as_result(x) or a results.Images/Points/Texts "
            "(docs/contributing.md: the model interface)",
        )
    if isinstance(result, Points):  # the real points beneath, for comparison
        result.real = data.test[0][: t.num_samples * 4]
    if isinstance(result, Images) and not result.nrow:
        result.nrow = GRID_ROW
    result.write(RunDir(run_dir).sample_file(f"step_{step:06d}"))
    result.log(log, "samples", step)
    if isinstance(result, Texts | Music):
        return
    first_test = next(data.eval_iter(t.batch_size, 1))
    batch = tuple(x.to(model.device) for x in first_test)
    for tag, images in model.log_images(batch).items():
        log.image(tag, to_grid(images), step)
