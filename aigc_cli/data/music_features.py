"""Yang & Lerch (2020), "On the evaluation of generative models in music": per-piece features,
and how far a set of generated pieces sits from the real ones, as the overlapping area of two
distance distributions. For each feature, the distances between real pieces (intra-set) and
the distances from each real piece to each generated one (inter-set) are smoothed with a
Gaussian kernel density estimate; the area under the smaller of the two densities is 1 when
the generated pieces are as far from the real ones as the real ones are from each other, and
falls towards 0 as they drift away. The same figure for a second set of real pieces is the
ceiling a model can reach with finite samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aigc_cli.results.music import note_spans

# The features, each a vector per piece, on the grid's steps (length-free: per-step rates and
# normalised histograms, since generated pieces and real ones differ in length).
FEATURES = (
    "pitch_count",  # distinct pitches used
    "pitch_class_histogram",  # 12 bins, normalised
    "pitch_range",  # highest minus lowest pitch, semitones
    "pitch_interval",  # mean absolute interval between consecutive onsets' mean pitches
    "note_rate",  # notes begun per grid step
    "inter_onset_interval",  # mean steps between consecutive onsets
    "note_length_histogram",  # notes of 1, 2, 3, 4, 5-8 and more than 8 steps, normalised
)
LENGTH_BINS = (1, 2, 3, 4, 8)  # upper edges in grid steps; a last bin holds the longer notes
GRID_POINTS = 512  # where each density is evaluated


def piece_features(roll: Tensor, low: int) -> dict[str, Tensor]:
    """The features of one (pitches, steps) 0/1 roll whose row 0 is MIDI pitch `low`."""
    on = roll.bool().cpu()
    steps = max(on.shape[1], 1)
    pitch_rows, firsts, lengths = note_spans(on)
    lengths = lengths.float()
    rows = on.any(1).nonzero().flatten().float()
    classes = torch.zeros(12).index_add_(0, (pitch_rows + low) % 12, torch.ones(len(firsts)))
    onsets, which = firsts.unique(return_inverse=True)
    pitch_sums = torch.zeros(len(onsets)).index_add_(0, which, pitch_rows.float())
    mean_pitch = pitch_sums / torch.bincount(which, minlength=len(onsets)).clamp(min=1)
    bins = torch.bucketize(lengths, torch.tensor(LENGTH_BINS, dtype=torch.float))
    length_hist = torch.zeros(len(LENGTH_BINS) + 1).index_add_(0, bins, torch.ones(len(bins)))
    return {
        "pitch_count": torch.tensor([float(len(rows))]),
        "pitch_class_histogram": classes / classes.sum().clamp(min=1),
        "pitch_range": torch.tensor([float(rows.max() - rows.min()) if len(rows) else 0.0]),
        "pitch_interval": torch.tensor(
            [mean_pitch.diff().abs().mean().item() if len(mean_pitch) > 1 else 0.0]
        ),
        "note_rate": torch.tensor([len(firsts) / steps]),
        "inter_onset_interval": torch.tensor(
            [onsets.diff().float().mean().item() if len(onsets) > 1 else 0.0]
        ),
        "note_length_histogram": length_hist / length_hist.sum().clamp(min=1),
    }


def feature_sets(rolls: list[Tensor], low: int) -> dict[str, Tensor]:
    """Feature name → (pieces, dims) for a list of rolls."""
    each = [piece_features(r, low) for r in rolls]
    return {f: torch.stack([e[f] for e in each]) for f in FEATURES}


def overlapping_area(a: Tensor, b: Tensor) -> float:
    """The area under min(p, q) for Gaussian kernel density estimates p of `a` and q of `b`
    (1-D samples; Scott's bandwidth each), on a grid that spans both."""
    a, b = a.double().flatten(), b.double().flatten()
    lo = min(a.min().item(), b.min().item())
    hi = max(a.max().item(), b.max().item())
    bw = [_scott(x, hi - lo) for x in (a, b)]
    grid = torch.linspace(lo - 4 * max(bw), hi + 4 * max(bw), GRID_POINTS, dtype=torch.double)
    p, q = (_density(x, h, grid) for x, h in zip((a, b), bw, strict=True))
    return float(torch.trapezoid(torch.minimum(p, q), grid).clamp(0.0, 1.0))


def _scott(x: Tensor, span: float) -> float:
    """Scott's rule, with a floor for samples that are (nearly) all equal."""
    return max(x.std().item() if len(x) > 1 else 0.0, 1e-3 * span, 1e-6) * len(x) ** (-1 / 5)


def _density(x: Tensor, h: float, grid: Tensor) -> Tensor:
    z = (grid[:, None] - x[None, :]) / h
    return (-0.5 * z**2).exp().sum(1) / (len(x) * h * math.sqrt(2 * math.pi))


def mean_overlap(real: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, float]:
    """Per feature and on average: the overlapping area of the real pieces' intra-set
    distances and the real-to-other inter-set distances."""
    out = {}
    for f in FEATURES:
        r, o = real[f].double(), other[f].double()
        intra = torch.pdist(r) if len(r) > 1 else torch.zeros(1, dtype=torch.double)
        inter = torch.cdist(r, o).flatten()
        out[f] = overlapping_area(intra, inter)
    out["mean"] = sum(out[f] for f in FEATURES) / len(FEATURES)
    return out
