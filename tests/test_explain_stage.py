"""`bigmodel explain` as a stage: a rerun with the same texts, options and checkpoint skips and
leaves its files alone, --force or any change runs again, and it holds the workspace lock."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TOY_META, assert_fails, lock_held_elsewhere

from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.model.transformer import ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("wide_console")
WORDS = list(SPECIAL_TOKENS) + ["w1", "w2", "w3", "good", "bad"]
TEXT = ["explain", "w1 good w2", "--method", "saliency,attention"]


@pytest.fixture
def cls_ws(ws, save_run):
    """An untrained two-label classifier as the run `toy`: the stage, not the model, is tested."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=1, dim=16, heads=2, ffn=32, max_positions=16,
                                    num_labels=2, labels=["neg", "pos"], lm_head=False))
    save_run(ws, "toy", model.eval(), WORDS, TOY_META)
    return ws


def files(ws) -> dict[str, int]:
    """Every file under explanations/, with its modification time in ns."""
    return {str(p.relative_to(ws.root)): p.stat().st_mtime_ns for p in sorted((ws.root / "explanations").rglob("*"))
            if p.is_file()}


def age(ws) -> None:
    """Set every explanation file's time an hour back, so that a rewrite shows."""
    for path in (ws.root / "explanations").rglob("*"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns - 3600 * 10**9, stat.st_mtime_ns - 3600 * 10**9))


def records(ws) -> int:
    return len(ws.records("explain:toy"))


def test_a_rerun_skips_and_leaves_the_files_alone(cls_ws, run_cli):
    first = run_cli(TEXT, cls_ws.root)
    assert first.exit_code == 0, first.output
    assert "up to date" not in first.output and records(cls_ws) == 1
    age(cls_ws)
    before = files(cls_ws)
    assert any(name.endswith(".html") for name in before) and any(name.endswith(".jsonl") for name in before)
    again = run_cli(TEXT, cls_ws.root)
    assert again.exit_code == 0, again.output
    assert "explain toy (text) is up to date" in again.output and "Use --force to run again" in again.output
    assert "label:" not in again.output  # nothing was explained
    assert files(cls_ws) == before and records(cls_ws) == 1


def test_force_runs_again(cls_ws, run_cli):
    assert run_cli(TEXT, cls_ws.root).exit_code == 0
    age(cls_ws)
    before = files(cls_ws)
    forced = run_cli([*TEXT, "--force"], cls_ws.root)
    assert forced.exit_code == 0, forced.output
    assert "up to date" not in forced.output and "label:" in forced.output
    after = files(cls_ws)
    assert after.keys() == before.keys() and all(after[name] > before[name] for name in before)
    assert records(cls_ws) == 2


@pytest.mark.parametrize("change", [
    ["--method", "saliency"],   # another option
    ["--steps", "8"],           # even one that only some methods use
    ["--png"],                  # another output
])
def test_a_changed_option_runs_again(cls_ws, run_cli, change):
    assert run_cli(TEXT, cls_ws.root).exit_code == 0
    result = run_cli([*TEXT[:2], "--method", "saliency,attention", *change], cls_ws.root)
    assert result.exit_code == 0, result.output
    assert "up to date" not in result.output and records(cls_ws) == 2


def test_a_changed_input_file_or_a_missing_output_runs_again(cls_ws, run_cli, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("w1 good\nw2 bad\n", encoding="utf-8")
    args = ["explain", "--input", path, "--method", "saliency"]
    assert run_cli(args, cls_ws.root).exit_code == 0
    assert "up to date" in run_cli(args, cls_ws.root).output
    path.write_text("w1 good\nw3 bad\n", encoding="utf-8")
    assert "up to date" not in run_cli(args, cls_ws.root).output
    assert "up to date" in run_cli(args, cls_ws.root).output
    next((cls_ws.root / "explanations" / "toy").glob("texts-*.html")).unlink()
    result = run_cli(args, cls_ws.root)
    assert "up to date" not in result.output and next((cls_ws.root / "explanations" / "toy").glob("texts-*.html"))
    assert records(cls_ws) == 3
    record = cls_ws.last_record("explain:toy")
    assert [i["path"] for i in record["inputs"]][1:] == [str(path)]  # the input file is hashed into the record


def test_a_skipped_json_run_prints_the_saved_lines(cls_ws, run_cli):
    first = run_cli([*TEXT, "--json"], cls_ws.root)
    assert first.exit_code == 0, first.output
    again = run_cli([*TEXT, "--json"], cls_ws.root)
    assert again.exit_code == 0 and "up to date" in again.stderr
    assert again.stdout == first.stdout and json.loads(again.stdout)["predicted"] in ("neg", "pos")


def test_a_skipped_faithfulness_run_shows_its_table(cls_ws, run_cli):
    args = [*TEXT, "--faithfulness"]
    assert run_cli(args, cls_ws.root).exit_code == 0
    again = run_cli(args, cls_ws.root)
    assert again.exit_code == 0 and "up to date" in again.output
    assert "comprehensiveness" in again.output and "faithfulness" in again.output


@pytest.mark.parametrize("holder", ["finetune --name toy", "explain toy"])
def test_a_held_lock_refuses_and_writes_nothing(cls_ws, run_cli, holder):
    with lock_held_elsewhere(cls_ws, holder) as process:
        line = assert_fails(run_cli(TEXT, cls_ws.root), "busy", f"pid {process.pid}")
        assert f"`bigmodel {holder}`" in line
    assert files(cls_ws) == {} and records(cls_ws) == 0
    result = run_cli(TEXT, cls_ws.root)  # the lock given back, the same command runs
    assert result.exit_code == 0 and records(cls_ws) == 1


def test_quickstarts_example_writer_takes_the_lock_too(cls_ws):
    from bigmodel_cli.errors import WorkspaceBusy
    from bigmodel_cli.explain.explain import explain_texts, write_outputs

    folder, _, results, _ = explain_texts(cls_ws, ["w1 good"], run="toy", methods=["saliency"])
    with lock_held_elsewhere(cls_ws, "finetune --name toy"), pytest.raises(WorkspaceBusy):
        write_outputs(cls_ws, folder, results, None, stem="example", html_path=None, png=False,
                      params={"methods": ["saliency"]}, inputs_note="example")
    assert records(cls_ws) == 0
