"""The command-line surface: help, version, fast start-up, the console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import invoke
from typer.testing import CliRunner

import bigmodel_cli
import bigmodel_cli.cli  # noqa: F401  (registers the commands)
from bigmodel_cli.cli._util import app

COMMANDS = ("init", "preprocess", "segment", "status", "embed", "pretrain", "generate", "finetune", "evaluate",
            "predict", "explain", "export", "quickstart")
HEAVY = ("torch", "gensim", "jieba", "jieba_next", "sklearn", "nltk")


def registered_commands() -> list[str]:
    """Commands and command groups (such as `embed`) on the app."""
    return [c.name or c.callback.__name__ for c in app.registered_commands] + [g.name for g in app.registered_groups]


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in set(COMMANDS) | set(registered_commands()):
        assert f" {name} " in result.stdout, name
    assert "--version" in result.stdout


def test_every_command_is_registered():
    assert set(COMMANDS) <= set(registered_commands())


def test_every_command_is_documented():
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    docs = " ".join(p.read_text(encoding="utf-8") for p in (root / "docs").glob("*.md"))
    for name in registered_commands():
        assert f"`bigmodel {name}" in readme, f"{name} missing from the README's command table"
        assert f"bigmodel {name}" in docs, f"{name} missing from docs/"


@pytest.mark.parametrize("name", sorted(set(COMMANDS) | set(registered_commands())))
def test_command_help_has_examples(name):
    for flag in ("--help", "-h"):
        result = invoke(name, flag)
        assert result.exit_code == 0, result.output
        assert f"Usage: bigmodel {name}" in result.stdout
        assert "Examples" in result.stdout
        assert f"bigmodel {name}" in result.stdout.split("Examples", 1)[1]  # an example of this command


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"bigmodel {bigmodel_cli.__version__}"


def test_unknown_command():
    result = invoke("pretrian")
    assert result.exit_code == 2
    assert "pretrian" in result.output


def test_import_does_not_load_heavy_libraries():
    code = (
        "import sys\n"
        "import bigmodel_cli.cli\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing bigmodel_cli.cli loaded: {out.stdout.strip()}"


def test_help_imports_no_heavy_library():
    # --help is instant when it loads none of them; a wall-clock limit here would fail on a busy machine
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "bigmodel_cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "preprocess" in out.stdout
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert "typer" in imported  # the import log was read
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_console_script_on_path(tmp_path):
    scripts = sysconfig.get_path("scripts")  # the virtualenv's bin/
    path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    exe = shutil.which("bigmodel", path=path)
    assert exe is not None, f"no `bigmodel` in {scripts}"
    assert Path(exe).parent == Path(scripts)
    env = {**os.environ, "PATH": path}
    out = subprocess.run(["bigmodel", "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout
    out = subprocess.run(["bigmodel", "--version"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"bigmodel {bigmodel_cli.__version__}"


def test_console_script_user_error_exit_code(tmp_path):
    """A user mistake, through the real entry point: one line on stderr, exit 2, no traceback."""
    env = {**os.environ, "PATH": os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])}
    out = subprocess.run(["bigmodel", "status"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "bigmodel init" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("command,shown", [
    ("finetune", "[default: cls]"), ("preprocess", "[default: off]"), ("embed", "[default: word2vec]"),
    ("pretrain", "[default: mlm]"),
])
def test_help_shows_the_defaults_written_in_option_help(command, shown):
    # The defaults come from bigmodel.toml, so each option's help states its own; rich would
    # read an unescaped "[default: x]" as a markup tag and drop it from the page.
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and shown in result.output
