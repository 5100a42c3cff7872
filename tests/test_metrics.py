"""FID, KID, precision/recall and class coverage: the formulas against direct computations, and
the whole path through a classifier run, training and `aigc eval`."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aigc_cli.data.base import DataSpec
from aigc_cli.errors import CheckpointError, ConfigError
from aigc_cli.metrics import stats
from aigc_cli.models.base import GenerativeModel
from aigc_cli.results import Images

from .helpers import event_tags, tiny_overrides


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID the textbook way: tr sqrt(S1 S2) from the eigenvalues of the (non-symmetric) product,
    which are real and non-negative for two covariance matrices."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    assert stats.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert stats.fid(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)  # mean term only
    assert stats.fid(x, x * 2) > 1.0


def test_fid_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(200, 8)) * 1.5 + 0.3
    ours = stats.fid(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(numpy_fid(a, b), rel=1e-6)


def test_fid_with_a_singular_covariance():
    # fewer samples than dimensions: the covariances are singular, the distance stays finite
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, 32, generator=g), torch.randn(10, 32, generator=g)
    value = stats.fid(a, b)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(numpy_fid(a.numpy(), b.numpy()), rel=1e-4)


def test_polynomial_mmd_equals_a_hand_computation():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([[0.5, 0.5], [2.0, -1.0], [0.0, 1.0], [-1.0, 3.0]])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / 2 + 1) ** 3

    xs, ys = x.tolist(), y.tolist()
    kxx = sum(k(xs[i], xs[j]) for i in range(3) for j in range(3) if i != j) / 6
    kyy = sum(k(ys[i], ys[j]) for i in range(4) for j in range(4) if i != j) / 12
    kxy = sum(k(a, b) for a in xs for b in ys) / 12
    assert stats.polynomial_mmd2(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    # KID compares equal-sized subsets: one subset of all of two 3-row sets is their MMD
    mean, std = stats.kid(x, y[:3], subsets=1, subset_size=10)
    assert mean == pytest.approx(stats.polynomial_mmd2(x, y[:3]), rel=1e-12) and std == 0.0


def test_kid_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = stats.kid(a, b, subsets=20, subset_size=200)
    other, _ = stats.kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 < other


def test_precision_recall():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(200, 4, generator=g)
    assert stats.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert stats.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # generated samples collapsed onto a tenth of the real ones: precise, little recall
    collapsed = real[:20].repeat(10, 1)
    precision, recall = stats.precision_recall(real, collapsed, k=3, chunk=7)
    assert precision == 1.0 and recall < 0.3


def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # k=1 radii: 1, 1, 1, 8
    fake = torch.tensor([[0.5], [5.0], [30.0], [31.0]])  # radii: 4.5, 4.5, 1, 1
    precision, recall = stats.precision_recall(real, fake, k=1)
    assert precision == 0.5  # 0.5 (near 0, 1) and 5.0 (inside 10's radius 8); not 30, 31
    assert recall == 0.75  # 0, 1, 2 lie within 4.5 of 0.5; 10 lies 5 from 5.0 > 4.5


def test_class_coverage():
    probs = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.2, 0.7, 0.1, 0.0], [0.6, 0.3, 0.1, 0.0]])
    coverage, confidence = stats.class_coverage(probs)
    assert coverage == 0.5 and confidence == pytest.approx((0.9 + 0.7 + 0.6) / 3)


def test_classifier_learns_shapes_and_does_not_sample(make_cfg):
    from aigc_cli.build import build_data, build_model
    from aigc_cli.config import OptimConfig

    cfg = make_cfg(model="classifier")
    data = build_data(cfg.dataset)
    model = build_model({"name": "classifier", "base_channels": 8, "max_channels": 16}, data.spec)
    opt = model.optimizers(OptimConfig(lr=3e-3))["model"]
    batches = data.train_iter(32, 0)
    losses = []
    for step in range(30):
        stage = next(model.training_step(next(batches), step))
        opt.zero_grad()
        stage.loss.backward()
        opt.step()
        losses.append(stage.loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    model.eval()
    assert model.features(torch.rand(5, 3, 32, 32)).shape == (5, 128)
    # the classifier is trained like any model but is no GenerativeModel: nothing to sample
    assert not isinstance(model, GenerativeModel) and not hasattr(model, "sample")
    with pytest.raises(ConfigError, match="labelled dataset"):
        build_model({"name": "classifier"}, DataSpec("image", [3, 32, 32]))


def test_fid_kid_pr_in_training_and_eval(run_main, tmp_path):
    """A classifier run is found by dataset; training reports the sample metrics at the end,
    `aigc eval` adds them to metrics.json and TensorBoard's hparams."""
    code, _, err = run_main("train", *tiny_overrides("classifier"), "hydra.run.dir=outputs/clf")
    assert code == 0, err
    assert not (tmp_path / "outputs" / "clf" / "samples").exists()  # nothing to sample
    sample_metrics = [
        "metrics.names=[fid,kid,pr,coverage]",
        "metrics.num_samples=40",
        "metrics.batch_size=16",
        "metrics.kid_subset_size=20",
        "metrics.every=3",
    ]
    code, _, err = run_main("train", *tiny_overrides("vae"), *sample_metrics,
                            "trainer.best_metric=fid", "hydra.run.dir=outputs/vae")  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "outputs" / "vae" / "metrics.json").read_text())
    for key in ("fid", "kid", "kid_std", "precision", "recall", "class_coverage"):
        assert np.isfinite(record[f"test/{key}"]), key
    assert record["test/fid"] > 0 and 0 <= record["test/precision"] <= 1
    assert "not Inception-FID" in record["methods"]["test/fid"]
    assert "outputs/clf" in record["methods"]["test/fid"]
    assert (tmp_path / "outputs" / "vae" / "checkpoints" / "best.pt").is_file()
    assert "test/fid" in event_tags(tmp_path / "outputs" / "vae")["scalars"]

    code, out, err = run_main("eval", "run=outputs/vae", "metrics=[nll,fid,kid]",
                              "num_samples=40", "kid_subset_size=20", "batch_size=16")  # fmt: skip
    assert code == 0, err
    assert "not Inception-FID" in out
    evaluated = json.loads((tmp_path / "outputs" / "vae" / "metrics.json").read_text())
    assert evaluated["test/fid"] == record["test/fid"]  # training's own figures stay
    last = evaluated["eval"]["last"]
    assert {"test/nelbo", "test/fid", "test/kid"} <= set(last) and "test/recall" not in last
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "outputs" / "vae" / "tb" / "eval"))
    acc.Reload()
    assert "hparam/eval/fid" in acc.Tags()["scalars"]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")

    # the classifier itself has no samples to judge
    code, _, err = run_main("eval", "run=outputs/clf", "metrics=[fid]")
    assert code != 0 and "generates none" in err


def test_missing_classifier_is_one_clear_error(run_main, tmp_path):
    code, _, err = run_main("train", *tiny_overrides("vae"), "metrics.names=[fid]")
    assert code != 0 and "Traceback" not in err
    assert "no classifier run for dataset 'shapes'" in err
    assert "aigc train model=classifier dataset=shapes" in err
    code, _, err = run_main("train", *tiny_overrides("vae"), "metrics.names=[fdi]")
    assert code != 0 and "metrics.names" in err and "choose from: fid, kid, pr, coverage" in err
    code, _, err = run_main("train", *tiny_overrides("vae"), "trainer.best_metric=kid")
    assert code != 0 and "metrics.names=[kid]" in err


def _random_inception_state(num_classes: int) -> dict[str, torch.Tensor]:
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    net = Inception3(num_classes=num_classes, aux_logits=False, init_weights=True)
    for m in net.modules():  # non-trivial running statistics, as in trained weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def test_inception_weights_file_loads_with_the_fid_pooling(tmp_path):
    from torchvision.models.inception import Inception3

    from aigc_cli.metrics.inception import load_inception

    state = _random_inception_state(1008)
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    net = load_inception(path)
    assert net.standard_fid
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        feats = net(x)
        assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
        # the same weights in torchvision's own network pool differently: other features
        plain = Inception3(num_classes=1008, aux_logits=False, init_weights=False).eval()
        plain.load_state_dict(state)
        plain.fc = torch.nn.Identity()
        plain.dropout = torch.nn.Identity()
        x3 = F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
        x3 = x3 * 2 - 1
        assert not torch.allclose(plain(x3), feats, atol=1e-4)

    torch.save(_random_inception_state(1000), tmp_path / "imagenet.pth")
    assert not load_inception(tmp_path / "imagenet.pth").standard_fid
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_inception(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_inception(tmp_path / "absent.pth")


class _StandIn:
    """A 'model' whose samples are chosen images: real ones, degraded ones, noise."""

    generates = True

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.pos = images, 0

    def sample(self, n: int, generator=None) -> Images:
        out = self.images[self.pos : self.pos + n]
        self.pos += n
        return Images(images=out)


def test_sample_metrics_rank_real_above_degraded_above_noise(make_cfg, monkeypatch):
    """In the classifier's feature space, unseen real images score best, a set where half the
    images are noise worse, noise worst, on every metric: what lets `aigc eval` rank runs. The
    half-noise set sits in between by construction (its kernel MMD to the real data is a quarter
    of pure noise's), whatever the briefly trained classifier happens to be sensitive to; a
    blurred set was not, for some seeds. 1000 samples keep KID's estimate well clear of 0."""
    from aigc_cli.build import build_data, build_model
    from aigc_cli.config import OptimConfig
    from aigc_cli.metrics.quality import MetricsConfig, SampleQuality

    torch.manual_seed(0)
    data = build_data(make_cfg("dataset.train_size=2000", "dataset.test_size=1000").dataset)
    clf = build_model({"name": "classifier", "base_channels": 8, "max_channels": 16}, data.spec)
    opt = clf.optimizers(OptimConfig(lr=3e-3))["model"]
    batches = data.train_iter(32, 0)
    for step in range(100):
        stage = next(clf.training_step(next(batches), step))
        opt.zero_grad()
        stage.loss.backward()
        opt.step()
    clf.eval()
    cfg = MetricsConfig(num_samples=1000, batch_size=250, kid_subset_size=200, kid_subsets=50)
    cpu, classifier = torch.device("cpu"), (clf, "test classifier")
    q = SampleQuality(cfg, ["fid", "kid", "pr", "coverage"], data, cpu, classifier)
    unseen = data.train[0][-1000:].float() / 255  # real images, not the test split's
    noise = torch.rand_like(unseen)
    half = torch.cat([unseen[:500], noise[500:]])[torch.randperm(1000)]
    scores = [q(_StandIn(images)) for images in (unseen, half, noise)]
    for key in ("fid", "kid"):
        assert scores[0][key] < scores[1][key] < scores[2][key], key
    assert scores[0]["precision"] > scores[2]["precision"]
    assert scores[0]["recall"] > scores[2]["recall"]
    # coverage depends on how well this briefly trained classifier separates the classes; its
    # formula is checked in test_class_coverage
    assert 0 < scores[0]["class_coverage"] <= 1

    # coverage alone needs the classifier's labels, not features: nothing is embedded
    only = SampleQuality(cfg, ["coverage"], data, cpu, classifier)
    assert only.features is None
    covered = only(_StandIn(unseen))
    assert set(covered) == {"class_coverage", "class_confidence"}
    assert covered["class_coverage"] == scores[0]["class_coverage"]


@pytest.mark.slow
@pytest.mark.long
def test_eval_ranks_a_trained_run_above_a_barely_trained_one(run_main, tmp_path):
    """More training scores better on NLL and on FID (classifier features), through `aigc eval`."""
    sizes = ["dataset.train_size=1000", "dataset.test_size=300", "trainer.batch_size=32",
             "trainer.eval_every=0", "trainer.sample_every=0", "trainer.ckpt_every=0"]  # fmt: skip
    code, _, err = run_main("train", *tiny_overrides("classifier"), *sizes,
                            "trainer.max_steps=60", "hydra.run.dir=outputs/clf")  # fmt: skip
    assert code == 0, err
    scores = {}
    for name, steps in (("barely", 1), ("well", 200)):
        run = f"outputs/{name}"
        code, _, err = run_main("train", *tiny_overrides("vae"), *sizes, "optim.lr=2e-3",
                                f"trainer.max_steps={steps}", f"hydra.run.dir={run}")  # fmt: skip
        assert code == 0, err
        code, _, err = run_main("eval", f"run={run}", "metrics=[nll,fid]", "num_samples=300",
                                "classifier=outputs/clf")  # fmt: skip
        assert code == 0, err
        scores[name] = json.loads((tmp_path / run / "metrics.json").read_text())["eval"]["last"]
    assert scores["well"]["test/nelbo"] < scores["barely"]["test/nelbo"]
    assert 0 < scores["well"]["test/fid"] < scores["barely"]["test/fid"]


def test_sampler_and_nfe_stand_beside_every_sample_quality_figure(run_main, tmp_path):
    """FID of a diffusion run records the sampler it sampled with and its NFE, in training's
    metrics.json and in each `aigc eval` (whose sampler= / steps= choose another)."""
    code, _, err = run_main("train", *tiny_overrides("classifier"), "hydra.run.dir=outputs/clf")
    assert code == 0, err
    small = ["model.base_channels=8", "model.timesteps=20", "model.steps=4",
             "metrics.names=[fid]", "metrics.num_samples=16", "metrics.batch_size=16"]  # fmt: skip
    code, _, err = run_main("train", *tiny_overrides("diffusion"), *small,
                            "hydra.run.dir=outputs/dm")  # fmt: skip
    assert code == 0, err
    path = tmp_path / "outputs" / "dm" / "metrics.json"
    record = json.loads(path.read_text())
    assert record["test/nfe"] == 4 and np.isfinite(record["test/fid"])
    assert record["methods"]["test/fid"].endswith(
        "samples: ddim, 4 steps, 4 network evaluations per sample"
    )
    assert "samples/nfe" in event_tags(tmp_path / "outputs" / "dm")["scalars"]
    code, out, err = run_main("eval", "run=outputs/dm", "metrics=[fid]", "num_samples=16",
                              "batch_size=16", "sampler=ddpm")  # fmt: skip
    assert code == 0, err
    assert "test/nfe" in out
    last = json.loads(path.read_text())["eval"]["last"]
    assert last["test/nfe"] == 20 and "ddpm, 20 steps" in last["methods"]["test/fid"]
    code, _, err = run_main("eval", "run=outputs/clf", "sampler=ddim")
    assert code != 0 and "has no sampler options" in err and "Traceback" not in err
    code, _, err = run_main("eval", "run=outputs/dm", "metrics=[fid]", "sampler=heun")
    assert code != 0 and "'heun' does not fit model 'diffusion'" in err


class _Painter:
    """A text-to-image stand-in that 'draws' each caption as the real test image it belongs to
    (looked up by caption), or, shuffled, as another group's image."""

    takes_prompts = True

    def __init__(self, by_caption: dict[str, list[torch.Tensor]], swap: dict[str, str]) -> None:
        self.by_caption, self.swap = by_caption, swap
        self.used: dict[str, int] = {}

    def sample(self, n: int, generator=None, prompts=None) -> Images:
        assert prompts is not None and len(prompts) == n  # one sample per real test caption
        out = []
        for p in prompts:
            key = self.swap.get(p, p)
            i = self.used.get(key, 0)
            self.used[key] = i + 1
            out.append(self.by_caption[key][i % len(self.by_caption[key])])
        return Images(images=torch.stack(out))


def test_text_to_image_fid_draws_one_sample_per_test_caption_and_splits_by_group():
    """FID of a text-to-image model samples the real test captions: a model that draws each
    caption's own real image scores 0 overall and in every group (closed form: identical
    feature sets); one that draws red things for blue captions and back keeps the overall set
    nearly the same but is far off within the red and blue groups."""
    from aigc_cli.build import build_data
    from aigc_cli.data.captions import decode_captions
    from aigc_cli.metrics.quality import MetricsConfig, SampleQuality

    data = build_data({"name": "captioned_shapes", "image_size": 16, "train_size": 16,
                       "test_size": 400, "seed": 3})  # fmt: skip
    captions = data.spec.extra["captions"]
    x, _, ids, _ = data.test
    texts = decode_captions(ids, captions)
    by_caption: dict[str, list[torch.Tensor]] = {}
    for image, text in zip(x.float() / 255, texts, strict=True):
        by_caption.setdefault(text, []).append(image)
    features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
    torch.manual_seed(0)
    cfg = MetricsConfig(num_samples=400, batch_size=100)
    stand_in = types.SimpleNamespace(features=features)
    q = SampleQuality(cfg, ["fid"], data, torch.device("cpu"), (stand_in, "a random linear map"))
    same = q(_Painter(by_caption, {}))
    assert same["fid"] == pytest.approx(0, abs=1e-6)
    assert same["fid_group_max"] == pytest.approx(0, abs=1e-6) and q.group_fid
    swap = {t: t.replace("red", "blue") if "red" in t else t.replace("blue", "red")
            for t in by_caption if ("red" in t) != ("blue" in t)}  # fmt: skip
    swap = {a: b for a, b in swap.items() if b in by_caption}
    crossed = q(_Painter(by_caption, swap))
    red = [g for g in q.group_fid if g.startswith(("red", "blue"))]
    others = [g for g in q.group_fid if g not in red]
    assert min(q.group_fid[g] for g in red) > 10 * max(q.group_fid[g] for g in others) + 1e-3
    assert crossed["fid_group_mean"] > crossed["fid"]
