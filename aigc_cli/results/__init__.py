"""What `sample()` returns, one typed result per kind of output, each with the one writer that
turns it into files and TensorBoard entries. `aigc sample`, the training loop's periodic
samples, sample-quality metrics and the Python API all go through these.

A new kind of output is one module here: a `SampleResult` subclass with its
`write` and `log`."""

from aigc_cli.results.base import Board, SampleResult
from aigc_cli.results.images import Images
from aigc_cli.results.music import Music
from aigc_cli.results.points import Points
from aigc_cli.results.texts import Texts

__all__ = ["Board", "Images", "Music", "Points", "SampleResult", "Texts"]
