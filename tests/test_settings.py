"""Each setting is documented once: in its dataclass, one comment beside the field. The YAML of
a config group holds the values a command line starts from; a comment there, when there is one,
must be the dataclass's own, and a value must be the dataclass's default (unless the group file
exists to choose another, listed in CHOSEN). A drift in either fails here."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aigc_cli.config import OptimConfig, TrainerConfig
from aigc_cli.registry import DATASETS, MODELS

CONFIGS = Path(__file__).resolve().parent.parent / "aigc_cli" / "configs"
# group files whose point is another value than the dataclass default (eval.yaml: an open
# section for dataset.root= and the like)
CHOSEN = {("optim/adamw.yaml", "weight_decay"), ("eval.yaml", "dataset")}


def field_comments(cls: type) -> dict[str, str | None]:
    """Each field's trailing `# comment` in the source of the dataclass (or of the dataclass it
    inherits the field from)."""
    out: dict[str, str | None] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        src = Path(sys.modules[klass.__module__].__file__ or "").read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(src))):
            if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
                for st in node.body:
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                        out[st.target.id] = field_doc(src, st.lineno, st.end_lineno)  # type: ignore[arg-type]
    return out


def field_doc(src: list[str], first: int, last: int) -> str | None:
    """The field's trailing comment, or the comment lines right above it (a longer doc, which a
    YAML file then does not repeat at all)."""
    m = re.search(r"  # (.*)$", src[last - 1])
    if m:
        return m.group(1)
    above = []
    i = first - 2
    while i >= 0 and src[i].strip().startswith("#"):
        above.insert(0, src[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(above) or None


def yaml_comments(path: Path, section: str | None) -> dict[str, str | None]:
    """The trailing comments of the keys directly under `section:` (or at the top level)."""
    out: dict[str, str | None] = {}
    inside, indent = section is None, None
    for line in path.read_text().splitlines():
        if section is not None:
            if re.match(rf"^{section}:\s*(#.*)?$", line):
                inside, indent = True, None
                continue
            if re.match(r"^\S", line):
                inside = False
        m = re.match(r"^(\s*)(\w+):(.*)$", line) if inside else None
        if m:
            indent = m.group(1) if indent is None else indent
            if m.group(1) == indent:
                out[m.group(2)] = m.group(3).partition(" #")[2].strip() or None
    return out


def default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def group_files() -> list[tuple[str, str | None, type]]:
    files = [("trainer/default.yaml", None, TrainerConfig)]
    files += [(f"optim/{p.name}", None, OptimConfig) for p in (CONFIGS / "optim").glob("*.yaml")]
    files += [(f"model/{p.name}", "model" if "model" in OmegaConf.load(p) else None,
               MODELS.get(p.stem).config) for p in (CONFIGS / "model").glob("*.yaml")]  # fmt: skip
    files += [(f"dataset/{p.name}", None, DATASETS.get(p.stem).config)
              for p in (CONFIGS / "dataset").glob("*.yaml")]  # fmt: skip
    from aigc_cli.commands.eval import EvalConfig
    from aigc_cli.commands.export import ExportConfig
    from aigc_cli.commands.sample import SampleConfig
    from aigc_cli.commands.serve import ServeConfig

    files += [("sample.yaml", None, SampleConfig), ("eval.yaml", None, EvalConfig),
              ("export.yaml", None, ExportConfig), ("serve.yaml", None, ServeConfig)]  # fmt: skip
    return sorted(files, key=lambda f: f[0])


@pytest.mark.parametrize("rel, section, schema", group_files(), ids=lambda v: str(v))
def test_a_group_file_repeats_no_comment_and_no_default_differently(rel, section, schema):
    docs = field_comments(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    path = CONFIGS / rel
    node = OmegaConf.load(path)
    values = OmegaConf.to_container(node.get(section) if section else node, resolve=False)
    drift = []
    for key, comment in yaml_comments(path, section).items():
        if key not in fields:
            continue
        if comment is not None and comment != docs[key]:
            drift.append(f"{key}: comment {comment!r}, the dataclass says {docs[key]!r}")
        value = values[key]  # type: ignore[index]
        if key == "name" or (isinstance(value, str) and "${" in value) or (rel, key) in CHOSEN:
            continue
        if value != default(fields[key]):
            drift.append(f"{key}: {value!r} here, {default(fields[key])!r} in the dataclass")
    assert not drift, f"{rel} drifts from {schema.__qualname__}: {drift}"


def test_every_field_is_documented_in_its_dataclass():
    schemas = {s for _, _, s in group_files()}
    missing = [f"{s.__qualname__}.{k}" for s in schemas for k, c in field_comments(s).items()
               if not c and k != "name"]  # fmt: skip
    assert not missing, missing


def test_drift_is_caught(tmp_path, monkeypatch):
    """The check itself: a changed comment and a changed value both fail it."""
    text = (CONFIGS / "trainer/default.yaml").read_text()
    changed = text.replace("# optimizer steps", "# steps", 1).replace(
        "log_every: 25", "log_every: 7"
    )
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer/default.yaml").write_text(changed)
    monkeypatch.setattr(sys.modules[__name__], "CONFIGS", tmp_path)
    with pytest.raises(AssertionError) as e:
        test_a_group_file_repeats_no_comment_and_no_default_differently(
            "trainer/default.yaml", None, TrainerConfig
        )
    assert "max_steps: comment" in str(e.value) and "log_every: 7 here" in str(e.value)
