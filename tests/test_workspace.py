"""The workspace: layout and config, config precedence, run records, skipping, status,
the lock, and atomic outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
from collections import Counter
from pathlib import Path

import pytest
import tomllib
from conftest import invoke, lock_held_elsewhere, read_split, snapshot

from bigmodel_cli import __version__
from bigmodel_cli.cli import _util
from bigmodel_cli.data.preprocess import preprocess
from bigmodel_cli.errors import UserError, WorkspaceBusy
from bigmodel_cli.fileio import atomic_write, recover_dir, replace_dir
from bigmodel_cli.workspace.config import PreprocessConfig, ProjectConfig
from bigmodel_cli.workspace.layout import LAYOUT, STAGES, Workspace
from bigmodel_cli.workspace.records import stage_status

CORPUS = """\
我爱北京天安门
今天天气很好
我爱自然语言处理
他喜欢北京
天安门很大
我们去北京
北京欢迎你
上海也很好
今天去上海
明天去天津
我爱上海
他们喜欢天津
今天我们去天安门
北京今天天气很好
我喜欢自然语言处理
上海欢迎你
天津也很大
明天我们去北京
他爱北京
我们喜欢上海
"""

FAST = PreprocessConfig(workers=1, min_count=1)


# -- fixtures and helpers ---------------------------------------------------------
pytestmark = pytest.mark.usefixtures("wide_console")


def set_option(ws: Workspace, key: str, value: str, section: str = "preprocess") -> None:
    """Rewrite one `key = value` line of bigmodel.toml (inside `section`)."""
    text = ws.config_path.read_text(encoding="utf-8")
    head, _, rest = text.partition(f"[{section}]\n")
    rest, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", rest, count=1, flags=re.M)
    assert n == 1, key
    ws.config_path.write_text(head + f"[{section}]\n" + rest, encoding="utf-8")


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A zh workspace (made with `bigmodel init`) with one worker and the corpus in data/raw."""
    result = invoke("init", tmp_path / "proj", "--lang", "zh")
    assert result.exit_code == 0, result.output
    workspace = Workspace(tmp_path / "proj")
    set_option(workspace, "workers", "1")
    (workspace.raw / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return workspace


def corpus_path(ws: Workspace) -> Path:
    return ws.raw / "corpus.txt"


def record_files(ws: Workspace, stage: str = "preprocess") -> list[Path]:
    return sorted(ws.records_dir(stage).glob("*.json"))


def vocab_words(ws: Workspace) -> set[str]:
    lines = (ws.processed / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {line.split("\t")[0] for line in lines[5:]}  # after the 5 special tokens


def train_counts(ws: Workspace) -> Counter:
    counts: Counter = Counter()
    for record in read_split(ws.processed, "train"):
        counts.update(record["tokens"])
    return counts


def status_line(ws: Workspace, stage: str = "preprocess") -> str:
    result = invoke("status", "-w", ws.root)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.search(rf"\b{re.escape(stage)}\b", line)]
    assert len(lines) == 1, result.stdout
    return lines[0]


def status_row(ws: Workspace, stage: str = "preprocess") -> dict:
    return next(row for row in stage_status(ws) if row["stage"] == stage)


# -- init and the config file ------------------------------------------------------
def test_init_writes_commented_config_and_layout(tmp_path):
    root = tmp_path / "reviews"
    result = invoke("init", root, "--lang", "zh")
    assert result.exit_code == 0, result.output
    assert "created workspace" in result.stdout

    text = (root / "bigmodel.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert data["project"]["lang"] == "zh"
    assert data["project"]["seed"] == ProjectConfig().seed
    defaults = PreprocessConfig()
    assert set(data["preprocess"]) == {f.name for f in dataclasses.fields(PreprocessConfig)}
    for f in dataclasses.fields(PreprocessConfig):
        assert data["preprocess"][f.name] == getattr(defaults, f.name), f.name

    lines = text.splitlines()
    for name in [f.name for f in dataclasses.fields(PreprocessConfig)] + ["lang", "seed"]:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        assert lines[index - 1].startswith("# ") and len(lines[index - 1]) > 4, f"{name} has no comment"

    for sub in ("data/raw", "data/processed", "embeddings", "runs", "reports", "explanations", ".bigmodel/records"):
        assert (root / sub).is_dir(), sub
    assert set(LAYOUT) >= {"data/raw", "data/processed", ".bigmodel/records"}


def test_init_twice_keeps_edited_config(tmp_path):
    root = tmp_path / "w"
    assert invoke("init", root, "--lang", "zh").exit_code == 0
    config = root / "bigmodel.toml"
    edited = config.read_text(encoding="utf-8").replace("min_count = 2", "min_count = 7") + "\n# my note\n"
    config.write_text(edited, encoding="utf-8")
    (root / "reports").rmdir()

    result = invoke("init", root, "--lang", "en")
    assert result.exit_code == 0, result.output
    assert "already a workspace" in result.stdout
    assert config.read_text(encoding="utf-8") == edited
    assert (root / "reports").is_dir()  # missing folders are created again
    assert Workspace(root).config()["preprocess"]["min_count"] == 7


def test_init_rejects_unknown_lang(tmp_path):
    result = invoke("init", tmp_path / "w", "--lang", "fr")
    assert result.exit_code == 2
    assert "--lang must be one of zh, en, auto" in result.stderr
    assert not (tmp_path / "w" / "bigmodel.toml").exists()


# -- finding the workspace ----------------------------------------------------------
def test_find_from_subfolder(ws, monkeypatch):
    monkeypatch.chdir(ws.root / "data" / "raw")
    assert Workspace.find().root == ws.root
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert str(ws.root) in "".join(result.stdout.split())  # the title may wrap before a long path


def test_workspace_option(ws, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Workspace.find(ws.root).root == ws.root
    for flag in ("-w", "--workspace"):
        result = invoke("status", flag, ws.root)
        assert result.exit_code == 0, result.output
        assert str(ws.root) in result.stdout
    result = invoke("preprocess", "--workspace", ws.root)  # reads data/raw/
    assert result.exit_code == 0, result.output
    assert (ws.processed / "train.parquet").is_file()


@pytest.mark.parametrize("command", [["status"], ["preprocess", "corpus.txt"]])
def test_outside_a_workspace(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    result = invoke(*command)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "no bigmodel workspace" in message
    assert "bigmodel init" in message
    assert "Traceback" not in result.output


def test_workspace_option_not_a_workspace(tmp_path):
    result = invoke("status", "-w", tmp_path)
    assert result.exit_code == 2
    assert "is not a bigmodel workspace" in result.stderr
    assert "bigmodel init" in result.stderr


# -- config precedence and validation ---------------------------------------------------
def test_config_precedence_default_toml_cli(ws):
    # default (min_count = 2)
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    counts = train_counts(ws)
    assert vocab_words(ws) == {t for t, c in counts.items() if c >= 2}
    assert any(c == 1 for c in counts.values())  # so min_count makes a difference

    # bigmodel.toml beats the default
    set_option(ws, "min_count", "1")
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 0, result.output
    assert vocab_words(ws) == set(train_counts(ws))
    assert ws.last_record("preprocess")["params"]["min_count"] == 1

    # the command line beats bigmodel.toml
    result = invoke("preprocess", "-w", ws.root, "--min-count", "3")
    assert result.exit_code == 0, result.output
    counts = train_counts(ws)
    assert vocab_words(ws) == {t for t, c in counts.items() if c >= 3}
    assert vocab_words(ws) != set(counts)
    assert ws.last_record("preprocess")["params"]["min_count"] == 3


def test_project_section_and_cli_lang(ws):
    set_option(ws, "seed", "7", section="project")
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    params = ws.last_record("preprocess")["params"]
    assert (params["lang"], params["seed"]) == ("zh", 7)
    assert invoke("preprocess", "-w", ws.root, "--seed", "9", "--lang", "auto").exit_code == 0
    params = ws.last_record("preprocess")["params"]
    assert (params["lang"], params["seed"]) == ("auto", 9)


def test_unknown_key_in_config(ws):
    text = ws.config_path.read_text(encoding="utf-8").replace("min_count = 2", "min_count = 2\nmin_cout = 1")
    ws.config_path.write_text(text, encoding="utf-8")
    for command in (["preprocess"], ["segment", "我爱北京"]):
        result = invoke(*command, "-w", ws.root)
        assert result.exit_code == 2
        assert "unknown option 'min_cout' in [preprocess]" in result.stderr
        assert "bigmodel.toml" in result.stderr
        assert "min_count" in result.stderr  # the known options are listed
    with pytest.raises(UserError, match="min_cout"):
        ws.config()


@pytest.mark.parametrize("key,value", [("min_count", '"two"'), ("nfkc", "1"), ("workers", "1.5"), ("split", "0.8")])
def test_wrong_type_in_config(ws, key, value):
    set_option(ws, key, value)
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 2
    assert f"bigmodel.toml [preprocess] {key} must be" in result.stderr
    assert "Traceback" not in result.output
    assert not record_files(ws)


def test_invalid_toml(ws):
    ws.config_path.write_text("[preprocess\nmin_count = 2\n", encoding="utf-8")
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 2
    assert "bigmodel.toml: not valid TOML" in result.stderr


# -- run records and skipping -----------------------------------------------------------
def test_run_record(ws):
    result = preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    assert not result.skipped
    files = record_files(ws)
    assert len(files) == 1
    record = json.loads(files[0].read_text(encoding="utf-8"))
    assert record == result.record
    assert record["stage"] == "preprocess" and record["status"] == "ok"
    assert record["run_id"] == files[0].stem

    data = corpus_path(ws).read_bytes()
    assert record["inputs"] == [{"path": "data/raw/corpus.txt", "sha256": hashlib.sha256(data).hexdigest()}]

    params = record["params"]
    assert params["min_count"] == 1 and params["workers"] == 1 and params["lang"] == "zh" and params["seed"] == 42
    assert params["sources"] == [{"split": None, "path": "data/raw/corpus.txt", "format": "txt", "encoding": "utf-8"}]

    outputs = {Path(o["path"]).name: o["sha256"] for o in record["outputs"]}
    assert {"train.parquet", "dev.parquet", "test.parquet", "vocab.txt", "report.json"} <= set(outputs)
    assert all(o["path"].startswith("data/processed/") for o in record["outputs"])
    for name, digest in outputs.items():
        assert hashlib.sha256((ws.processed / name).read_bytes()).hexdigest() == digest, name
    assert set(outputs) == {p.name for p in ws.processed.iterdir() if p.is_file()}

    metrics = record["metrics"]
    assert metrics["documents_kept"] == len(CORPUS.splitlines()) == 20
    assert metrics["duplicates"] == 0 and metrics["rejected"] == 0
    assert metrics["vocab_size"] == len((ws.processed / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert isinstance(record["seconds"], float) and record["seconds"] >= 0
    assert record["versions"]["python"] == platform.python_version()
    assert record["versions"]["bigmodel"] == __version__
    assert "jieba" in record["versions"]
    assert record["config"] == {"project": ws.config()["project"], "preprocess": ws.config()["preprocess"]}


def test_second_identical_run_is_skipped(ws):
    first = preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    before = snapshot(ws.processed)
    second = preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    assert second.skipped
    assert second.record["run_id"] == first.record["run_id"]
    assert second.report["vocab_size"] == first.report["vocab_size"]
    assert len(record_files(ws)) == 1
    assert snapshot(ws.processed) == before

    forced = preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh", force=True)
    assert not forced.skipped
    assert forced.record["run_id"] != first.record["run_id"]
    assert len(record_files(ws)) == 2


def test_changed_input_or_option_runs_again(ws):
    preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    with open(corpus_path(ws), "a", encoding="utf-8") as handle:
        handle.write("深圳欢迎你\n")
    result = preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    assert not result.skipped
    assert result.record["metrics"]["documents_kept"] == 21
    assert len(record_files(ws)) == 2

    assert preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh").skipped
    result = preprocess(ws, [corpus_path(ws)], config=dataclasses.replace(FAST, min_count=2), lang="zh")
    assert not result.skipped
    assert result.record["params"]["min_count"] == 2
    assert len(record_files(ws)) == 3


def test_cli_skip_and_force(ws):
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout and "skipped" in result.stdout
    assert len(record_files(ws)) == 1

    result = invoke("preprocess", "-w", ws.root, "--force")
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stdout
    assert "20 read, 20 kept" in result.stdout
    assert len(record_files(ws)) == 2

    result = invoke("preprocess", "-w", ws.root, "--no-dedupe")  # a changed option
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stdout
    assert len(record_files(ws)) == 3


# -- status ---------------------------------------------------------------------------
def test_status_never_run(ws):
    for stage in STAGES:
        line = status_line(ws, stage)
        assert "never run" in line
    assert all(row["state"] == "never run" for row in stage_status(ws))


def test_status_up_to_date_then_stale_after_input_change(ws):
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    line = status_line(ws)
    assert "up to date" in line and "documents_kept=20" in line
    assert "never run" in status_line(ws, "embed")

    with open(corpus_path(ws), "a", encoding="utf-8") as handle:
        handle.write("深圳欢迎你\n")
    line = status_line(ws)
    assert "stale" in line and "input data/raw/corpus.txt changed" in line
    assert status_row(ws)["reasons"] == ["input data/raw/corpus.txt changed"]

    corpus_path(ws).unlink()
    assert "input data/raw/corpus.txt is gone" in status_line(ws)


def test_status_stale_after_output_edit(ws):
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    with open(ws.processed / "train.parquet", "ab") as handle:
        handle.write(b"{}\n")
    line = status_line(ws)
    assert "stale" in line and "output data/processed/train.parquet was changed or rewritten" in line

    (ws.processed / "vocab.txt").unlink()
    assert "output data/processed/vocab.txt is missing" in status_line(ws)

    # a stale output means the next run is not skipped
    result = invoke("preprocess", "-w", ws.root)
    assert "skipped" not in result.stdout
    assert "up to date" in status_line(ws)


def test_status_stale_after_config_change(ws):
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    set_option(ws, "max_vocab", "100")
    line = status_line(ws)
    assert "stale" in line and "[preprocess] in bigmodel.toml changed" in line
    # an edit outside [preprocess] (a note, another stage's section) is not a change of preprocess
    set_option(ws, "max_vocab", "30000")
    with open(ws.config_path, "a", encoding="utf-8") as handle:
        handle.write("\n# a note\n[notes]\ntodo = \"try min_count 3\"\n")
    assert "up to date" in status_line(ws)


def test_status_stale_after_project_change(ws):
    # [project] lang and seed shape preprocess (segmentation, split), so they count too
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    set_option(ws, "seed", "7", section="project")
    line = status_line(ws)
    assert "stale" in line and "[project] in bigmodel.toml changed" in line
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 0 and "skipped" not in result.stdout
    assert "up to date" in status_line(ws)


def test_status_reports_broken_config(ws):
    ws.config_path.write_text(ws.config_path.read_text(encoding="utf-8") + "\n[preprocess]\n", encoding="utf-8")
    result = invoke("status", "-w", ws.root)
    assert result.exit_code == 2
    assert "bigmodel.toml" in result.stderr and "Traceback" not in result.output


def test_wrong_type_on_command_line_names_the_option(ws):
    result = invoke("preprocess", "-w", ws.root, "--split", "0.8")
    assert result.exit_code == 2
    assert "--split" in result.stderr and "0.8" in result.stderr


def test_status_failed_run(ws):
    result = invoke("preprocess", "-w", ws.root, "--min-chars", "1000")
    assert result.exit_code == 2
    assert "no documents kept" in result.stderr
    record = ws.last_record("preprocess", status=None)
    assert record["status"] == "failed" and "no documents kept" in record["error"]
    assert record["outputs"] == []
    line = status_line(ws)
    assert "failed" in line and "no documents kept" in line
    assert status_row(ws)["state"] == "failed"

    # a later success clears it
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    assert "up to date" in status_line(ws)


# -- the lock -----------------------------------------------------------------------
def test_lock_held_by_another_process(ws):
    with lock_held_elsewhere(ws, "preprocess") as holder:
        result = invoke("preprocess", "-w", ws.root)
        assert result.exit_code == 2
        assert "busy" in result.stderr
        assert f"pid {holder.pid} is running `bigmodel preprocess`" in result.stderr
        assert not record_files(ws)
        assert not (ws.processed / "train.parquet").exists()
    assert holder.returncode == 0
    result = invoke("preprocess", "-w", ws.root)
    assert result.exit_code == 0, result.output
    assert (ws.processed / "train.parquet").is_file()


def test_lock_in_process(ws):
    with ws.lock("embed"):
        with pytest.raises(WorkspaceBusy, match="busy: pid .* is running `bigmodel embed`"):
            preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    assert not preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh").skipped
    assert (ws.meta / "lock").read_text(encoding="utf-8") == ""  # the lock file is never written
    assert not ws.running_path.exists()  # the holder's note is cleared


# -- atomic outputs ----------------------------------------------------------------------
def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("new, half written")
            raise RuntimeError("boom")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left

    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "wb") as handle:
            handle.write(b"new")
            raise KeyboardInterrupt
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

    with atomic_write(path) as handle:
        handle.write("new")
    assert path.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _boom_on_fifth_doc(original):
    calls = {"n": 0}

    def clean_doc(self, text):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, text)

    return clean_doc


@pytest.mark.parametrize("where", ["mid-stream", "vocab"])
def test_interrupted_preprocess_keeps_previous_output(ws, monkeypatch, where):
    import bigmodel_cli.data.preprocess as pp

    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    before = snapshot(ws.processed)
    assert {"train.parquet", "vocab.txt", "report.json"} <= set(before)
    records = record_files(ws)

    if where == "vocab":
        def boom(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr("bigmodel_cli.data.preprocess.Vocab.build", boom)
    else:
        monkeypatch.setattr(pp.DocProcessor, "clean_doc", _boom_on_fifth_doc(pp.DocProcessor.clean_doc))

    result = invoke("preprocess", "-w", ws.root, "--force")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert snapshot(ws.processed) == before
    assert sorted(p.name for p in ws.processed.parent.iterdir()) == ["processed", "raw"]  # no staging, no .old
    assert record_files(ws) == records
    assert status_row(ws)["state"] == "up to date"

    monkeypatch.undo()
    monkeypatch.setattr(_util.console, "_width", 400)
    result = invoke("preprocess", "-w", ws.root, "--force")
    assert result.exit_code == 0, result.output
    assert len(record_files(ws)) == len(records) + 1


def test_failed_preprocess_keeps_previous_output(ws):
    assert invoke("preprocess", "-w", ws.root).exit_code == 0
    before = snapshot(ws.processed)
    result = invoke("preprocess", "-w", ws.root, "--min-chars", "1000")
    assert result.exit_code == 2
    assert snapshot(ws.processed) == before
    assert sorted(p.name for p in ws.processed.parent.iterdir()) == ["processed", "raw"]


def test_recover_dir(tmp_path):
    target = tmp_path / "processed"
    old = tmp_path / "processed.old"
    old.mkdir()
    (old / "train.jsonl").write_text("kept", encoding="utf-8")
    recover_dir(target)
    assert (target / "train.jsonl").read_text(encoding="utf-8") == "kept"
    assert not old.exists()

    # with both present the current folder wins and nothing moves
    old.mkdir()
    (old / "train.jsonl").write_text("older", encoding="utf-8")
    recover_dir(target)
    assert (target / "train.jsonl").read_text(encoding="utf-8") == "kept"
    assert (old / "train.jsonl").read_text(encoding="utf-8") == "older"


def test_replace_dir(tmp_path):
    target, staging = tmp_path / "processed", tmp_path / ".staging"
    target.mkdir()
    (target / "a.txt").write_text("old", encoding="utf-8")
    staging.mkdir()
    (staging / "a.txt").write_text("new", encoding="utf-8")
    replace_dir(staging, target)
    assert (target / "a.txt").read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]


def test_lock_recovers_interrupted_swap(ws):
    preprocess(ws, [corpus_path(ws)], config=FAST, lang="zh")
    before = snapshot(ws.processed)
    ws.processed.rename(ws.processed.with_name("processed.old"))  # a crash between the two renames
    with ws.lock("preprocess"):
        assert snapshot(ws.processed) == before
    assert not ws.processed.with_name("processed.old").exists()


def test_sha256_in_background_hashes_files_and_leaves_out_missing_ones(tmp_path):
    from bigmodel_cli.fileio import sha256_in_background

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)  # several read blocks
    small = tmp_path / "small.txt"
    small.write_text("数据\n", encoding="utf-8")
    hashes = sha256_in_background([big, small, tmp_path / "missing"])()
    assert hashes == {big: hashlib.sha256(big.read_bytes()).hexdigest(),
                      small: hashlib.sha256("数据\n".encode()).hexdigest()}


def test_library_versions_are_importlib_metadatas_found_faster(monkeypatch):
    from importlib import metadata

    from bigmodel_cli.workspace import records

    expected = {}
    for name in records.RECORDED_LIBRARIES:
        try:
            expected[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    assert {"torch", "jieba"} <= set(expected)
    versions = records.library_versions()
    assert {k: v for k, v in versions.items() if k in records.RECORDED_LIBRARIES} == expected
    assert versions["bigmodel"] == records.__version__
    # Where no dist-info folder names a package, importlib.metadata answers.
    monkeypatch.setattr(records, "_dist_info_versions", lambda: {})
    assert records.library_versions() == versions
