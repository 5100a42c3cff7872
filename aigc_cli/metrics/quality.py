"""FID, KID, precision/recall and class coverage of an image model's samples against real test
images, in the feature space of a network `aigc` trained (the default, offline) or of the
standard FID Inception network when its weights file is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from aigc_cli.config import check, validate
from aigc_cli.data.base import DataModule
from aigc_cli.data.captions import COLOURS, SHAPES, decode_captions, follows_grammar
from aigc_cli.data.music import PIANO_LOW, ROLL_PITCHES, music_spec, roll_windows, trim_silence
from aigc_cli.errors import ConfigError
from aigc_cli.metrics import stats
from aigc_cli.metrics.inception import load_inception
from aigc_cli.metrics.prompts import KEYS as PROMPT_KEYS
from aigc_cli.metrics.prompts import PromptFollowing

GROUP_MIN = 20  # captions a subject group needs for its own FID
MUSIC_BATCH = 32  # pieces a music model draws at a time for the Fréchet distance

# metric group (what a user names) → the keys it adds to the results
GROUPS: dict[str, tuple[str, ...]] = {
    "fid": ("fid", "fid_group_mean", "fid_group_max"),
    "kid": ("kid", "kid_std"),
    "pr": ("precision", "recall"),
    "coverage": ("class_coverage", "class_confidence"),
    "prompts": PROMPT_KEYS,  # text-to-image: prompt following, read by the attribute reader
}


@dataclass
class MetricsConfig:
    names: list[str] = field(default_factory=list)  # any of: fid, kid, pr, coverage, prompts
    every: int = 0  # training: steps between them; 0 = only at the end
    num_samples: int = 2500  # generated images, compared with as many real test images
    batch_size: int = 250  # images generated and embedded at a time
    classifier: str | None = None  # run dir / checkpoint of model=classifier; null = newest match
    reader: str | None = None  # prompts: run dir of model=reader; null = newest match
    inception_weights: str | None = None  # FID Inception .pth: fid/kid/pr use its features
    pr_k: int = 3  # precision/recall: k of the k-NN radii (the paper uses 3)
    kid_subsets: int = 100  # KID: random subsets averaged over
    kid_subset_size: int = 1000  # KID: images per subset (capped by num_samples)


def validate_metrics(node: Any) -> MetricsConfig:
    m = validate("metrics", MetricsConfig, node)
    unknown = [n for n in m.names if n not in GROUPS]
    check(not unknown, "metrics.names", f"{unknown}; choose from: {', '.join(GROUPS)}")
    check(m.every >= 0, "metrics.every", "must be >= 0 (0 = only at the end)")
    check(m.num_samples >= 10, "metrics.num_samples", f"{m.num_samples} must be >= 10")
    check(m.batch_size >= 1, "metrics.batch_size", "must be >= 1")
    check(m.pr_k >= 1, "metrics.pr_k", "must be >= 1")
    check(m.kid_subsets >= 1, "metrics.kid_subsets", "must be >= 1")
    check(m.kid_subset_size >= 2, "metrics.kid_subset_size", "must be >= 2")
    return m


def check_best_metric(best_metric: str | None, m: MetricsConfig) -> None:
    """A sample-quality trainer.best_metric (fid, precision, ...) exists only when
    metrics.names computes its group: say so before training rather than at the end."""
    group = next((n for n, keys in GROUPS.items() if best_metric in keys), None)
    if group is not None and not any(best_metric in GROUPS[n] for n in m.names):
        raise ConfigError(
            f"trainer.best_metric={best_metric} is computed only when metrics.names has {group}",
            hint=f"add metrics.names=[{group}] (and metrics.every=N to check it during training)",
        )


def _check_data(cfg: MetricsConfig, names: list[str], data: DataModule, music: bool) -> None:
    """The metrics asked for fit the data, or one line says why not."""
    spec = data.spec
    if spec.kind != "image" and not music:
        raise ConfigError(
            f"{', '.join(names)} compare images; this run's data is {spec.kind}",
            hint="use metrics for image and music models only (nll applies to every model)",
        )
    if music and ("prompts" in names or cfg.inception_weights):
        raise ConfigError(
            "music is compared in the features of a classifier of its piano-roll windows",
            hint="use metrics=[fid,kid,pr] with classifier=<a run of model=classifier "
            "dataset.representation=roll>",
        )
    if "coverage" in names and spec.num_classes < 2:
        raise ConfigError(
            "coverage needs a labelled dataset; this one has no classes",
            hint="leave coverage out of the metrics",
        )


@dataclass
class FeatureNet:
    embed: Callable[[Tensor], Tensor]  # (B, C, H, W) in [0, 1] → (B, D)
    description: str  # how the features were computed, for the metrics' notes


def needs_classifier(cfg: MetricsConfig, names: list[str]) -> bool:
    """fid, kid and pr embed with the classifier unless Inception weights are given; coverage
    always reads its labels."""
    need_features = any(n in names for n in ("fid", "kid", "pr"))
    return "coverage" in names or (need_features and not cfg.inception_weights)


class SampleQuality:
    """Compares a model's samples with the first `num_samples` real test images. The real
    features are computed once, so periodic evaluation during training only pays for the
    generated side."""

    def __init__(
        self, cfg: MetricsConfig, names: list[str], data: DataModule, device: torch.device,
        classifier: tuple[Any, str] | None = None, reader: tuple[Any, str] | None = None,
    ) -> None:  # fmt: skip
        """`classifier`: the classifier model and its description, when `needs_classifier`
        (the caller finds and loads it: store/runs.py's load_classifier)."""
        spec = data.spec
        # Music in frames or tokens is compared as the roll representation's images, in the
        # feature space of a classifier trained on them (store/runs.py finds one).
        self.music = spec.kind != "image" and music_spec(spec) is not None
        _check_data(cfg, names, data, self.music)
        self.cfg, self.names, self.data, self.device = cfg, names, data, device
        self.classifier = None
        # fid, kid and pr compare feature sets; coverage only needs the classifier's labels, so
        # a coverage-only run embeds nothing.
        need_features = any(n in names for n in ("fid", "kid", "pr"))
        features = None
        if needs_classifier(cfg, names):
            if classifier is None:
                raise ValueError("SampleQuality needs the classifier for these metrics")
            clf, about = classifier
            self.classifier = clf
            if need_features:
                features = FeatureNet(clf.features, f"features of the {about}")
        if need_features and cfg.inception_weights:
            net = load_inception(cfg.inception_weights).to(device)
            kind = (
                "the standard FID Inception-v3 (pool3, 2048-d)"
                if net.standard_fid
                else ("an Inception-v3 that is not the standard FID network (pool3, 2048-d)")
            )
            features = FeatureNet(net, f"{kind} from {cfg.inception_weights}")
        self.features = features
        self.prompts, self.reader_about = None, ""
        if "prompts" in names:
            captions = spec.extra.get("captions")
            if not captions or not follows_grammar(captions) or reader is None:
                raise ConfigError(
                    "prompts judges text-to-image samples against captioned_shapes' grammar "
                    "(free captions have no reader to judge them)",
                    hint="use it with model.text=true on dataset=captioned_shapes",
                )
            self.prompts = PromptFollowing(reader[0], captions, cfg.num_samples, cfg.batch_size)
            self.reader_about = reader[1]
        self._real: Tensor | None = None
        self.captions = spec.extra.get("captions")
        self._prompts: list[str] = []  # the test captions the generated side draws from
        self._groups: Tensor | None = None  # each real test image's subject group
        self.group_fid: dict[str, float] = {}
        self.paired = False  # whether the last call drew one sample per real test caption
        self.sampler = ""  # the sampler and its NFE, for the families that have samplers

    def _embed(self, images: Tensor) -> Tensor:
        assert self.features is not None
        return self.features.embed(images.to(self.device).float()).double().cpu()

    def real_features(self) -> Tensor:
        """Features of the first `num_samples` test images; on captioned data also their
        captions, which the generated side draws from one each (a text-to-image FID compares
        images of the same captions), and for the grammar's scenes each subject's group."""
        if self._real is None and self.music:
            pieces = self.data.pieces["test"]
            windows = torch.cat([roll_windows(p.roll, PIANO_LOW) for p in pieces])
            windows = windows[: self.cfg.num_samples].float() / 255
            size = self.cfg.batch_size
            self._real = torch.cat([self._embed(windows[i : i + size])
                                    for i in range(0, len(windows), size)])  # fmt: skip
        if self._real is None:
            parts, ids, groups, seen = [], [], [], 0
            for batch in self.data.eval_iter(self.cfg.batch_size):
                parts.append(self._embed(batch[0]))
                if self.captions is not None:
                    ids.append(batch[2].cpu())
                    if len(batch) > 3:  # the scene's columns: the subject's shape and colour
                        groups.append(batch[3][:, 2].cpu() * len(COLOURS) + batch[3][:, 3].cpu())
                seen += batch[0].shape[0]
                if seen >= self.cfg.num_samples:
                    break
            n = self.cfg.num_samples
            self._real = torch.cat(parts)[:n]
            if ids:
                self._prompts = decode_captions(torch.cat(ids)[:n], self.captions or {})
            if groups:
                self._groups = torch.cat(groups)[:n]
        return self._real

    @torch.no_grad()
    def __call__(self, model: Any, seed: int = 0, **sample_options: Any) -> dict[str, float]:
        """The metrics of `n` samples; `sample_options` (sampler, steps, guidance, eta) go to
        the model's sampler, and the sampler's NFE is returned beside the figures."""
        out: dict[str, float] = {}
        if self.prompts is not None:
            out.update(self.prompts(model, seed, **sample_options))
            if self.names == ["prompts"]:
                return out
        n = self.cfg.num_samples
        if self.features is not None:
            real = self.real_features()
            n = real.shape[0]  # a test split smaller than num_samples caps both sides
        g = torch.Generator().manual_seed(seed)
        if self.music:
            return {**out, **self.compare(real, self.music_windows(model, n, g, sample_options))}
        feats, probs = [], []
        texts = bool(self._prompts) and getattr(model, "takes_prompts", False)
        self.paired = texts
        for start in range(0, n, self.cfg.batch_size):
            size = min(self.cfg.batch_size, n - start)
            prompts = {"prompts": self._prompts[start : start + size]} if texts else {}
            result = model.sample(size, generator=g, **prompts, **sample_options)
            images = result.images.to(self.device).float()
            if self.features is not None:
                feats.append(self._embed(images))
            if self.classifier is not None and "coverage" in self.names:
                probs.append(self.classifier.logits(images).softmax(1).cpu())
        if result.nfe is not None:
            out["nfe"] = float(result.nfe)
            self.sampler = f"{result.sampler}, {result.nfe} network evaluations per sample"
        if feats:
            out.update(self.compare(real, torch.cat(feats), seed))
            if "fid" in self.names and texts and self._groups is not None:
                out.update(self.group_fids(real, torch.cat(feats)))
        if "coverage" in self.names:
            out["class_coverage"], out["class_confidence"] = stats.class_coverage(torch.cat(probs))
        return out

    def compare(self, real: Tensor, fake: Tensor, seed: int = 0) -> dict[str, float]:
        """fid, kid and pr, those asked for, between two feature sets."""
        out: dict[str, float] = {}
        if "fid" in self.names:
            out["fid"] = stats.fid(real, fake)
        if "kid" in self.names:
            out["kid"], out["kid_std"] = stats.kid(real, fake, subsets=self.cfg.kid_subsets,
                                                   subset_size=self.cfg.kid_subset_size,
                                                   seed=seed)  # fmt: skip
        if "pr" in self.names:
            out["precision"], out["recall"] = stats.precision_recall(real, fake, k=self.cfg.pr_k)
        return out

    def music_windows(self, model: Any, n: int, g: torch.Generator,
                      options: dict[str, Any]) -> Tensor:  # fmt: skip
        """Features of `n` roll windows of generated pieces, drawn a few pieces at a time, each
        cut as the test pieces are (trailing silence dropped first)."""
        feats: list[Tensor] = []
        have = 0
        while have < n:
            pieces = max(1, min(MUSIC_BATCH, -(-(n - have) // 2)))
            result = model.sample(pieces, generator=g, **options)
            windows = torch.cat([roll_windows(trim_silence(r), result.low)
                                 for r in result.rolls.cpu()])  # fmt: skip
            feats.append(self._embed(windows.float() / 255))
            have += len(windows)
        return torch.cat(feats)[:n]

    def group_fids(self, real: Tensor, fake: Tensor) -> dict[str, float]:
        """FID within each subject group (shape x colour) of the captions, the real and the
        generated images of the same captions; groups of fewer than GROUP_MIN are left out."""
        assert self._groups is not None
        self.group_fid = {}
        for group in self._groups.unique().tolist():
            rows = self._groups == group
            if int(rows.sum()) >= GROUP_MIN:
                name = f"{COLOURS[group % len(COLOURS)]} {SHAPES[group // len(COLOURS)]}"
                self.group_fid[name] = stats.fid(real[rows], fake[rows])
        if not self.group_fid:
            return {}
        values = list(self.group_fid.values())
        return {"fid_group_mean": sum(values) / len(values), "fid_group_max": max(values)}

    def describe(self) -> dict[str, str]:
        n = self.cfg.num_samples if self._real is None else self._real.shape[0]
        subset = min(self.cfg.kid_subset_size, n)
        feats = self.features.description if self.features else ""
        caveat = (
            "" if self.cfg.inception_weights else
            "; compares runs scored with this same classifier, and is not Inception-FID"
        )  # fmt: skip
        paired = ", each generated from one of those images' captions" if self.paired else ""
        if self.music:
            paired = (f" (piano-roll windows of {ROLL_PITCHES} steps x C2-B5: generated pieces "
                      "and the test pieces, cut alike)")  # fmt: skip
        notes = {
            "fid": f"Fréchet distance (Heusel et al. 2017) between {n} generated and {n} real "
            f"test images{paired}, on {feats}{caveat}",
            "fid_group_mean": f"mean over the subject groups (shape x colour of the first thing "
            f"a caption names, at least {GROUP_MIN} captions each) of the FID between the real "
            f"and generated images of that group's captions, same features{caveat}; by group: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.group_fid.items())),
            "fid_group_max": "the largest of those group FIDs",
            "kid": f"KID (Bińkowski et al. 2018): unbiased MMD², cubic polynomial kernel, mean of "
            f"{self.cfg.kid_subsets} subsets of {subset}, same features{caveat}",
            "kid_std": "standard deviation of KID over its subsets",
            "precision": f"improved precision (Kynkäänniemi et al. 2019), k={self.cfg.pr_k}: share "
            f"of generated images inside the real images' k-NN balls, same features",
            "recall": "improved recall: share of real images inside the generated images' k-NN "
            "balls, same features",
        }
        if self.classifier is not None:
            notes["class_coverage"] = (
                f"share of the {self.data.spec.num_classes} classes the classifier assigns to at "
                f"least one of {n} generated images"
            )
            notes["class_confidence"] = "mean top-class probability on the generated images"
        if self.prompts is not None:
            notes.update(self.prompts.describe(self.reader_about, self.cfg.num_samples))
        keys = {k for g in self.names for k in GROUPS[g]}
        out = {k: v for k, v in notes.items() if k in keys}
        if self.sampler:  # beside every figure: samples from another sampler score differently
            out = {k: f"{v}; samples: {self.sampler}" for k, v in out.items()}
            out["nfe"] = f"network evaluations per sample ({self.sampler})"
        return out
