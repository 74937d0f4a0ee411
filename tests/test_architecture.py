"""The layout is the architecture: subpackages in pipeline order, data flowing one way.

Every import of a bigmodel_cli module, at the top of a file or inside a function, is read
with ast. A module may import from the base modules, its own package and the packages
before it in the pipeline, never from one after it; and no stage module imports another
stage's module (shared pieces live in helper modules below the stages)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bigmodel_cli"

# Modules every layer may use; they import nothing of bigmodel_cli but each other.
BASE = {"errors", "fileio", "lifecycle", "__init__"}
# Pipeline order: a package may import from those before it.
LAYERS = ["workspace", "data", "embeddings", "model", "training", "evaluation", "inference", "explain", "pipeline", "cli"]
# One module per stage (what a command runs); they do not import each other. pipeline and
# cli compose the stages and are not stages themselves.
STAGES = {"data.preprocess", "embeddings.embed", "training.pretrain", "training.finetune", "evaluation.evaluate",
          "inference.predict", "inference.generate", "inference.export", "explain.explain"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imported(path: Path, name: str) -> set[str]:
    """The bigmodel_cli modules that `path` (module `name`) imports, as dotted names below
    bigmodel_cli, anywhere in the file."""
    out = set()
    package = name.rsplit(".", 1)[0] if "." in name else ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("bigmodel_cli.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module == "bigmodel_cli":
                module = ""
            elif node.module and node.module.startswith("bigmodel_cli."):
                module = node.module.split(".", 1)[1]
            else:
                continue
            if module and module.split(".")[0] not in LAYERS:  # a base module
                out.add(module)
                continue
            for alias in node.names:  # `from bigmodel_cli.model import checkpoint` names a module
                candidate = f"{module}.{alias.name}" if module else alias.name
                out.add(candidate if (PACKAGE / Path(*candidate.split("."))).with_suffix(".py").exists() else module)
    out.discard("")
    return out


def layer(module: str) -> int:
    top = module.split(".")[0]
    return -1 if top in BASE else LAYERS.index(top)


def problems() -> list[str]:
    found = []
    for name, path in modules().items():
        if name == "__main__":
            continue
        for target in sorted(imported(path, name)):
            if layer(target) > layer(name):
                found.append(f"{name} imports {target}, which comes later in the pipeline")
            elif layer(name) == -1 and layer(target) != -1:
                found.append(f"base module {name} imports {target}")
            if name in STAGES and target in STAGES and target != name:
                found.append(f"stage {name} imports stage {target}")
    return found


def test_every_module_sits_in_a_known_package():
    strays = [n for n in modules() if n.split(".")[0] not in LAYERS and n not in BASE | {"__main__"}]
    assert strays == []
    assert STAGES <= set(modules())


def test_imports_follow_the_pipeline_and_no_stage_imports_another():
    assert problems() == []


@pytest.mark.parametrize("source, expected", [
    ("from bigmodel_cli.training.pretrain import pretrain", "a stage"),
    ("from bigmodel_cli.inference import predict", "later in the pipeline"),
])
def test_the_check_catches_a_forbidden_import(tmp_path, monkeypatch, source, expected):
    """The check itself can fail: an import that breaks a rule is reported."""
    fake = tmp_path / "bigmodel_cli"
    for name, path in modules().items():
        target = fake / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text(encoding="utf-8")
        if name == "evaluation.evaluate":
            text += "\n" + source + "\n"
        target.write_text(text, encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    found = problems()
    assert found and all("evaluation.evaluate" in line for line in found)
    assert any(expected.split()[-1] in line for line in found)
