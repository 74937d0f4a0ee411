"""The options of the commands come from the config dataclasses (workspace/config.py): every
field has an option (or is listed as config-only), its help shows the dataclass's default, no
other option states a default of its own, and a value that is not a number is reported with
every other problem, in one line."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer

import bigmodel_cli.cli  # noqa: F401  (registers the commands)
from bigmodel_cli.cli._util import app

# The commands whose options are built from a config dataclass, by their path under `bigmodel`.
BUILT = ("evaluate", "embed", "pretrain", "finetune", "preprocess", "quickstart", "explain", "predict", "generate",
         "export", "segment")
# Options that still give a value as their default outside any dataclass: the launch options
# of the training commands, init's --lang, evaluate's --split and embed neighbors' --topn.
# Every other option without a field defaults to "not given", and its help names the rule
# that decides (`[default: the latest run]`).
HAND_WRITTEN = {("pretrain", "nproc"), ("pretrain", "nnodes"), ("pretrain", "node_rank"), ("pretrain", "master_port"),
                ("finetune", "nproc"), ("finetune", "nnodes"), ("finetune", "node_rank"), ("finetune", "master_port"),
                ("init", "lang"), ("evaluate", "split"), ("embed neighbors", "topn")}
SHOWN = re.compile(r"\\\[default: (.*)\]$")


def command(path: str):
    found = typer.main.get_command(app)
    for name in path.split():
        found = found.commands[name]
    return found


def all_commands():
    """(path, click command) for every command and group of the app."""
    out, pending = [], [("", typer.main.get_command(app))]
    while pending:
        path, cmd = pending.pop()
        out.append((path, cmd))
        pending += [(f"{path} {name}".strip(), sub) for name, sub in getattr(cmd, "commands", {}).items()]
    return out


def built_commands():
    """(path, click command) for every command built by config_options."""
    return [(path, cmd) for path, cmd in all_commands() if getattr(cmd.callback, "config_class", None) is not None]


def test_the_built_commands_are_the_stages():
    assert sorted(path for path, _ in built_commands()) == sorted(BUILT)


def shown_default(param) -> str | None:
    match = SHOWN.search(param.help or "")
    return match.group(1) if match else None


def agrees(param, default) -> bool:
    """Whether the default that `param`'s help shows is `default`."""
    shown = shown_default(param)
    if isinstance(default, bool):
        on, off = param.opts[0][2:], param.secondary_opts[0][2:]
        return shown == (("on" if default else "off") if off == f"no-{on}" else (on if default else off))
    if default in ("", []):
        return shown is None
    if isinstance(default, list):
        return shown == ", ".join(map(str, default))
    return shown is not None and type(default)(shown) == default


@pytest.mark.parametrize("path", BUILT)
def test_every_field_has_an_option_showing_its_default(path):
    cmd = command(path)
    cls, config_only = cmd.callback.config_class, cmd.callback.config_only
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(config_only) <= set(fields), "config_only names a field that does not exist"
    params = {p.name: p for p in cmd.params}
    for name, f in fields.items():
        if name in config_only:
            assert name not in params
            continue
        assert name in params, f"{path}: no option for {cls.__name__}.{name}"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert agrees(params[name], default), f"{path} {params[name].opts}: help shows {shown_default(params[name])!r}, the default is {default!r}"
        assert f.metadata["doc"].split(" (")[0].split(":")[0] in " ".join((params[name].help or "").split())


def states_a_value(param) -> bool:
    """Whether `param` has a default value of its own: given to the option, or written into its help."""
    if param.default is not None and param.default is not False:
        return True
    shown = shown_default(param)
    if shown is None:
        return False
    try:
        float(shown)
    except ValueError:
        return shown in ("on", "off")
    return True


def test_no_option_states_a_default_outside_its_dataclass():
    found = set()
    for path, cmd in all_commands():
        cls = getattr(cmd.callback, "config_class", None)
        fields = {f.name for f in dataclasses.fields(cls)} if cls else set()
        for param in cmd.params:
            if param.param_type_name == "option" and param.name not in fields | {"help"} and states_a_value(param):
                found.add((path, param.name))
    assert found == HAND_WRITTEN


def test_a_default_written_by_hand_is_caught():
    cmd = command("pretrain")
    assert {p.name for p in cmd.params if states_a_value(p)} >= {"nproc", "master_port"}  # 1 given, 29500 in the help
    assert not any(states_a_value(p) for p in command("explain").params if p.name in ("run", "layer", "html", "force"))


def test_segment_states_the_defaults_of_preprocess():
    from bigmodel_cli.workspace.config import PreprocessConfig, ProjectConfig, SegmentConfig

    assert SegmentConfig() == SegmentConfig(lang=ProjectConfig().lang, segmenter=PreprocessConfig().segmenter,
                                            user_dict=PreprocessConfig().user_dict, hmm=PreprocessConfig().hmm)


def test_a_help_default_that_drifts_is_caught():
    cmd = command("evaluate")
    param = next(p for p in cmd.params if p.name == "batch_size")
    assert agrees(param, 64) and not agrees(param, 65)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Usage" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("args,pieces", [
    (["--batch-size", "abc"], ["--batch-size must be a whole number, got 'abc'"]),
    (["-b", "1.5"], ["--batch-size must be a whole number, got '1.5'"]),
    (["-b", "0"], ["--batch-size must be a positive integer, got 0"]),
])
def test_evaluate_bad_values_are_one_line(ws, run_cli, args, pieces):
    line = one_line_error(run_cli(["evaluate", *args], ws.root))
    for piece in pieces:
        assert piece in line


@pytest.mark.parametrize("args,pieces", [
    (["embed", "--dim", "abc", "--window", "0", "--lr", "x", "--x-max", "-1"],
     ["--dim must be a whole number, got 'abc'", "--window must be a positive integer", "--lr must be a number, got 'x'",
      "x_max and glove_lr must be positive numbers, got -1.0"]),
    (["embed", "--method", "glove", "--epochs", "2.5", "-j", "-1"],
     ["--epochs must be a whole number, got '2.5'", "--workers must be 0 (one per core) or more, got -1"]),
    (["pretrain", "--dim", "30", "--heads", "4", "--lr", "-1", "--layers", "two", "--dropout", "1e"],
     ["--lr must be a positive number, got -1.0", "--heads (4) must divide --dim (30)", "--layers must be a whole number, got 'two'",
      "--dropout must be a number, got '1e'"]),
    (["finetune", "--from", "", "--max-len", " 2", "-b", "x", "--rdrop", "-1"],
     ["--from must name a pretrain run", "--max-len must be at least 3 ([CLS], one token, [SEP]), got 2", "--batch-size must be a whole number, got 'x'",
      "--rdrop must be 0 (off) or positive"]),
    (["preprocess", "corpus.txt", "--min-count", "abc", "--urls", "nope", "--max-vocab", "3", "-j", "2.0"],
     ["--min-count must be a whole number, got 'abc'", "--urls must be one of", "--max-vocab must leave room",
      "--workers must be a whole number, got '2.0'"]),
    (["generate", "w1", "--temperature", "hot", "--top-k", "1.5", "--seed", "x"],
     ["--temperature must be a number, got 'hot'", "--top-k must be a whole number, got '1.5'", "--seed must be a whole number"]),
    (["predict", "w1", "-b", "abc", "--top-k", "two"],
     ["--batch-size must be a whole number, got 'abc'", "--top-k must be a whole number, got 'two'"]),
    (["explain", "w1", "--steps", "many", "--limit", "1e3"],
     ["--steps must be a whole number, got 'many'", "--limit must be a whole number, got '1e3'"]),
    (["quickstart", "--minutes", "ten"], ["--minutes must be a number, got 'ten'"]),
])
def test_every_problem_at_once(ws, run_cli, args, pieces):
    line = one_line_error(run_cli(args, ws.root))
    for piece in pieces:
        assert piece in line


def test_a_bad_number_is_reported_with_the_config_file_problems(ws, run_cli):
    text = (ws.root / "bigmodel.toml").read_text(encoding="utf-8")
    (ws.root / "bigmodel.toml").write_text(text.replace("bins = 15", "bins = 0"), encoding="utf-8")
    line = one_line_error(run_cli(["evaluate", "-b", "abc"], ws.root))
    assert "--batch-size must be a whole number, got 'abc'" in line and "bins must be a positive integer, got 0" in line


def test_the_command_line_wins_over_the_config_file(ws, run_cli):
    text = (ws.root / "bigmodel.toml").read_text(encoding="utf-8")
    (ws.root / "bigmodel.toml").write_text(text.replace("batch_size = 64", "batch_size = 0"), encoding="utf-8")
    assert "--batch-size" in one_line_error(run_cli(["evaluate"], ws.root))
    line = one_line_error(run_cli(["evaluate", "-b", "8"], ws.root))  # the options pass; there is no run to score
    assert "batch" not in line
