import pytest

from aigc_cli.build import build_data, build_model
from aigc_cli.config import OptimConfig, TrainerConfig, validate, validate_optim, validate_trainer
from aigc_cli.errors import ConfigError

from .helpers import REPO


def test_yaml_defaults_match_schemas(make_cfg):
    """Every key in the trainer/optim YAML exists in the dataclass and vice versa."""
    cfg = make_cfg()
    assert set(cfg.trainer) == {f for f in TrainerConfig.__dataclass_fields__}
    assert set(cfg.optim) == {f for f in OptimConfig.__dataclass_fields__}
    validate_trainer(cfg.trainer)
    validate_optim(cfg.optim)


def test_misspelled_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as e:
        validate("trainer", TrainerConfig, {"max_step": 3})
    msg = str(e.value)
    assert "trainer.max_step" in msg and "max_steps" in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        validate("trainer", TrainerConfig, {"max_steps": "many"})


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("optim", {"lr": -1.0}, "optim.lr"),
        ("trainer", {"batch_size": 0}, "trainer.batch_size"),
        ("trainer", {"precision": "8"}, "trainer.precision"),
        ("optim", {"schedule": "linear"}, "optim.schedule"),
    ],
)
def test_out_of_range_values(section, values, key):
    fn = validate_optim if section == "optim" else validate_trainer
    with pytest.raises(ConfigError, match=key):
        fn(values)


def test_model_config_misspelled_key(make_cfg):
    cfg = make_cfg("+model.latnt_dim=3")
    data = build_data(cfg.dataset)
    with pytest.raises(ConfigError, match=r"model\.latnt_dim.*latent_dim"):
        build_model(cfg.model, data.spec)


def test_image_size_the_architecture_cannot_take(make_cfg):
    cfg = make_cfg("dataset.image_size=4")
    with pytest.raises(ConfigError, match=r"dataset\.image_size"):
        build_data(cfg.dataset)


def test_model_dataset_mismatch(make_cfg):
    cfg = make_cfg(dataset="gaussians")
    data = build_data(cfg.dataset)
    with pytest.raises(ConfigError, match="cannot train on points data"):
        build_model(cfg.model, data.spec)


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (REPO / "aigc_cli" / "configs" / "experiment").glob("*.yaml"))
)
def test_every_experiment_preset_composes_and_validates(preset):
    """A preset is what users copy from the README: it must compose over the defaults and pass
    the same checks `aigc train` runs before building anything."""
    from hydra import compose, initialize_config_module

    from aigc_cli.metrics.quality import check_best_metric, validate_metrics
    from aigc_cli.registry import DATASETS, MODELS

    with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={preset}"])
    t = validate_trainer(cfg.trainer)
    validate_optim(cfg.optim)
    check_best_metric(t.best_metric, validate_metrics(cfg.get("metrics") or {}))
    assert cfg.model.name in MODELS.names() and cfg.dataset.name in DATASETS.names()
    assert t.max_steps >= 1000  # every preset trains for real
