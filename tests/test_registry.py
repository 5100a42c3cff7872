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
        # `aigc list` shows the docstring's first line: a whole sentence, not one cut mid-way
        assert entry.description.endswith((".", ")")), f"{entry.name}: {entry.description!r}"


def test_registration_needs_a_config_dataclass():
    reg = Registry("widget")
    with pytest.raises(ValueError, match="needs a Config"):
        reg.register("b")(lambda cfg: None)


def test_static_catalogue_matches_the_live_registries():
    """`aigc list` reads the registration decorators without importing torch; it must list
    exactly what importing the modules registers."""
    from aigc_cli.registry import catalogue

    static = catalogue()
    for registry in (MODELS, DATASETS):
        live = [(e.name, e.description) for e in registry.entries()]
        assert static[registry.kind] == live


def test_aigc_list_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from aigc_cli.cli.app import main\n"
        "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'aigc list imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "classifier" in out.stdout and "image_folder" in out.stdout
