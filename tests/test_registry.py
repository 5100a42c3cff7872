from dataclasses import dataclass

import pytest

from aigc_cli.errors import ConfigError
from aigc_cli.registry import DATASETS, MODELS, Registry


@dataclass
class _Cfg:
    name: str = "x"


def test_duplicate_name_fails_loudly():
    reg = Registry("widget")
    reg.register("a", config=_Cfg)(lambda cfg: None)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a", config=_Cfg)(lambda cfg: None)


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError) as e:
        MODELS.get("gna")
    assert "unknown model 'gna'; choose from:" in str(e.value)
    assert "vae" in str(e.value)


def test_builtins_registered_with_descriptions():
    assert "vae" in MODELS.names()
    assert {"shapes", "gaussians"} <= set(DATASETS.names())
    for entry in [*MODELS.entries(), *DATASETS.entries()]:
        assert entry.description, f"{entry.name} needs a one-line docstring"


def test_registration_needs_a_config_dataclass():
    reg = Registry("widget")
    with pytest.raises(ValueError, match="needs a Config"):
        reg.register("b")(lambda cfg: None)
