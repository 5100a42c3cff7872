import torch

from aigc_cli.data.synthetic import GaussiansConfig, ShapesConfig, gaussians, mode_metrics, shapes
from aigc_cli.results import Points


def test_shapes_deterministic_and_well_formed():
    a = shapes(ShapesConfig(train_size=300, test_size=50))
    b = shapes(ShapesConfig(train_size=300, test_size=50))
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    x, y = a.train
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.uint8
    assert set(y.tolist()) == {0, 1, 2}
    # every image has a shape on a black background: lit pixels, but not everywhere
    lit = (x.float().amax(1) > 30).float().mean((1, 2))
    assert bool((lit > 0.02).all()) and bool((lit < 0.6).all())
    c = shapes(ShapesConfig(train_size=300, test_size=50, seed=7))
    assert not torch.equal(a.train[0], c.train[0])


def test_shapes_differ_by_class():
    """Squares fill more of their bounding box than circles, circles more than triangles."""
    d = shapes(ShapesConfig(train_size=600, test_size=10))
    x, y = d.train
    mask = x.float().amax(1) > 60  # (N, H, W)
    fill = []
    for cls in range(3):
        m = mask[y == cls]
        rows, cols = m.any(2).sum(1).float(), m.any(1).sum(1).float()
        fill.append((m.sum((1, 2)) / (rows * cols).clamp(min=1)).mean().item())
    assert fill[1] > fill[0] > fill[2]


def test_shapes_grey_and_sizes():
    d = shapes(ShapesConfig(train_size=20, test_size=5, image_size=28, channels=1))
    assert d.spec.shape == [1, 28, 28] and d.train[0].shape == (20, 1, 28, 28)


def test_epoch_iterator_resumes_same_order():
    d = shapes(ShapesConfig(train_size=40, test_size=8))
    it = d.train_iter(8, seed=3)
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        next(it)
    state = it.state_dict()
    expected = [next(it)[0] for _ in range(4)]
    it2 = d.train_iter(8, seed=3)
    it2.load_state_dict(state)
    for e in expected:
        assert torch.equal(next(it2)[0], e)


def test_gaussians_layout_and_metrics():
    ring = gaussians(GaussiansConfig(modes=8, train_size=2000, test_size=400))
    assert ring.spec.kind == "points" and ring.train[0].shape == (2000, 2)
    radius = ring.train[0].norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.05
    perfect = ring.sample_metrics(Points(points=ring.test[0]))
    assert perfect["modes_covered"] == 8 and perfect["high_quality"] > 0.98
    collapsed = ring.centres[:1].repeat(400, 1)
    m = ring.sample_metrics(Points(points=collapsed))
    assert m["modes_covered"] == 1 and m["high_quality"] == 1.0
    noise = mode_metrics(torch.randn(400, 2) * 5, ring.centres, ring.std)
    assert noise["high_quality"] < 0.1
    grid = gaussians(GaussiansConfig(modes=25, train_size=100, test_size=10))
    assert grid.centres.shape == (25, 2) and grid.std == 0.05


def test_rendered_shapes_are_cached_and_a_damaged_cache_is_rendered_again(tmp_path, monkeypatch):
    """The cache gives back exactly what rendering gives; a damaged entry is replaced, and
    AIGC_CACHE=off writes nothing."""
    from aigc_cli.build import build_data

    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    cfg = {"name": "shapes", "train_size": 50, "test_size": 10, "image_size": 16}
    first = build_data(cfg)
    [entry] = list(tmp_path.glob("shapes-*.safetensors"))
    again = build_data(cfg)
    assert torch.equal(again.train[0], first.train[0]) and torch.equal(again.test[1], first.test[1])
    monkeypatch.setenv("AIGC_CACHE", "off")
    fresh = build_data(cfg)
    assert torch.equal(fresh.train[0], first.train[0])  # the cache holds the true rendering
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setenv("AIGC_CACHE", str(tmp_path))
    entry.write_bytes(b"damaged")
    assert torch.equal(build_data(cfg).train[0], first.train[0])
    assert entry.stat().st_size > 1000  # rewritten
    other = build_data({**cfg, "seed": 7})  # another config, another entry
    assert not torch.equal(other.train[0], first.train[0])
    assert len(list(tmp_path.glob("shapes-*.safetensors"))) == 2
