"""`preprocess --shard K/N` and `preprocess --merge N`: the expensive part of preprocessing
on N machines (or N processes), run by any scheduler, and one merge into the dataset.

Cleaning and segmentation are the cost, and each document's result depends on that document
alone: they are what a shard does. De-duplication, the seeded stratified split, the language
filter's tally and the vocabulary depend on every document in input order: they are what the
merge does, with the stage's own code (preprocess.run_prepared), so the dataset is the same,
byte for byte, as one unsharded run's.

    shard K of N: read every record (parsing is cheap); clean and segment documents
                  K-1, K-1+N, K-1+2N, ... (by document number, so the parts are even
                  and no shard needs to know another); write
                  .bigmodel/shards/NAME/K-of-N/docs.jsonl and manifest.json (written last:
                  a folder without it is not a shard)
    merge N:      check that every shard is there and was made with these options from
                  these inputs; read the inputs again and take each document's clean text
                  and tokens from the shards, in turn; then the unsharded run's code.

Shards need no coordination: each writes only its own folder, through a staging folder, so
a shard killed halfway leaves the previous one whole; shards take no workspace lock. The
merge is recorded as the preprocess stage, so `status` and the later stages see one dataset.
The shard folders are left for the user to remove (`rm -r .bigmodel/shards/NAME`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bigmodel_cli.data.cleaning import detect_lang
from bigmodel_cli.data.parallel import OrderedWorkers
from bigmodel_cli.data.preprocess import (
    CHUNK_DOCS,
    DocProcessor,
    Job,
    PreprocessResult,
    _doc_stream,
    _json_str,
    _json_tokens,
    _options,
    parse_langs,
    run_prepared,
    worker_count,
)
from bigmodel_cli.data.readers import Reject
from bigmodel_cli.data.segment import Segmenter, SegmentOptions
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import (
    read_json,
    recover_dir,
    remove_stale,
    staged_dir,
    write_json,
)

MANIFEST = "manifest.json"
DOCS = "docs.jsonl"
# Options a shard and the merge may differ in: they change the speed, never the outputs.
SPEED_ONLY = ("workers",)
# How the run's parameters are named to a user whose shards disagree with the merge.
PARAM_NAMES = {"sources": "the input files", "label_required": "--label-field on the command line",
               "segmenter_resolved": "the segmenter --segmenter auto resolved to", "format": "--format"}


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' as (K, N), 1 <= K <= N."""
    parts = text.split("/")
    try:
        k, n = (int(p) for p in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        k, n = 0, 0
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"--shard must be K/N with 1 <= K <= N (this process's part of N), got '{text}'",
                        hint="for example --shard 1/4 ... --shard 4/4, or --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT "
                             "with --array=1-N")
    return k, n


def shard_dir(ws, job: Job, k: int, n: int) -> Path:
    return ws.meta / "shards" / job.target.name / f"{k}-of-{n}"


# -- one shard ------------------------------------------------------------------------
@dataclass
class ShardResult:
    skipped: bool
    folder: Path
    documents: int  # in the whole input
    mine: int  # cleaned and segmented here


def run_shard(ws, job: Job, k: int, n: int, *, force: bool = False) -> ShardResult:
    """Clean and segment the K-th of N parts of `job`'s documents into the shard's folder;
    skipped when it already holds this part made with the same options from the same inputs."""
    folder = shard_dir(ws, job, k, n)
    if folder.parent.is_dir():  # what a killed run of this shard left: its staging folder, a half-done replace
        recover_dir(folder)
        remove_stale(folder.parent, f".{folder.name}.staging-*", rf"\.{re.escape(folder.name)}\.staging-(\d+)")
    manifest = _manifest(folder)
    if manifest is None and folder.exists() and any(folder.iterdir()):
        raise UserError(f"{ws.relative(folder)}/ holds files but no {MANIFEST}; it is not a shard bigmodel wrote",
                        hint="move those files")
    if manifest is not None and not force and _same_run(manifest, job):
        return ShardResult(True, folder, manifest["documents"], manifest["mine"])
    with staged_dir(folder.with_name(f".{folder.name}.staging-{os.getpid()}"), folder) as staging:
        total, mine = _write_part(ws, job, k, n, staging)
        write_json(staging / MANIFEST, {"shard": k, "of": n, "documents": total, "mine": mine,
                                        "params": job.params, "inputs": job.input_hashes})
    return ShardResult(False, folder, total, mine)


def _write_part(ws, job: Job, k: int, n: int, staging: Path) -> tuple[int, int]:
    """docs.jsonl: one line per document of this part, in input order. Returns (documents
    in the input, documents in this part)."""
    cfg = job.cfg
    clean_opts, segment_opts = _options(cfg, job.lang, job.backend, staging)
    work = _PartWork(DocProcessor(clean_opts, segment_opts, cfg.min_chars, cfg.max_chars), frozenset(parse_langs(cfg.langs)))
    chunks_at_most = None if job.lines_at_most is None else -(-job.lines_at_most // (CHUNK_DOCS * n))
    workers, _ = worker_count(cfg.workers, chunks_at_most)
    if workers > 1:
        work.processor.load()  # once, before the workers fork, as the unsharded run does
    runner = OrderedWorkers(work.lines, workers, staging / "work")
    counter = _Counter()
    try:
        records = _doc_stream(ws, job.plan, cfg, job.label_required, lambda done: None)
        with open(staging / DOCS, "wb") as handle:
            for _, _, write in runner.map(_part_chunks(records, k, n, cfg.on_error == "fail", counter)):
                write({"docs": handle})
    except BaseException:
        runner.close(abort=True)
        raise
    runner.close()
    shutil.rmtree(staging / "work", ignore_errors=True)
    return counter.total, counter.mine


@dataclass
class _Counter:
    total: int = 0  # documents read (rejects are not documents)
    mine: int = 0  # of them, this shard's


def _part_chunks(records: Iterator, k: int, n: int, strict: bool, counter: _Counter) -> Iterator[tuple[None, list]]:
    """Chunks of (document number, text) of this part; every record is read, so that the
    numbers are the same in every shard and in the merge."""
    chunk = []
    for _, item in records:
        if isinstance(item, Reject):
            if strict:  # the message of the unsharded run (its _DocumentPass.reject), at the same record
                raise UserError(f"{item.source}: {item.reason}",
                                hint="fix the record, or drop --strict to skip bad records into rejects.jsonl")
            continue
        number = counter.total
        counter.total += 1
        if number % n != k - 1:
            continue
        counter.mine += 1
        chunk.append((number, item.text))
        if len(chunk) >= CHUNK_DOCS:
            yield None, chunk
            chunk = []
    if chunk:
        yield None, chunk


@dataclass
class _PartWork:
    processor: DocProcessor
    langs: frozenset

    def lines(self, chunk: list[tuple[int, str]]) -> tuple[dict[str, bytes], None, dict]:
        """A chunk's lines: the clean text and its tokens, or why the document is dropped. A
        document the language filter drops keeps its clean text (the merge counts it under
        its language) but is not segmented."""
        processor = self.processor
        if processor._segmenter is None:
            processor.load()
        out = []
        for number, text in chunk:
            clean, reason = processor.clean_doc(text)
            if clean is None:
                out.append(f'{{"i": {number}, "drop": {_json_str(reason)}}}\n')
            elif self.langs and detect_lang(clean) not in self.langs:
                out.append(f'{{"i": {number}, "clean": {_json_str(clean)}}}\n')
            else:
                tokens, lang = processor._segmenter.tokenize(clean)
                out.append(f'{{"i": {number}, "clean": {_json_str(clean)}, "tokens": {_json_tokens(clean, tokens)}, '
                           f'"lang": "{lang}"}}\n')
        return {"docs": "".join(out).encode("utf-8")}, None, {}


# -- the merge --------------------------------------------------------------------------
def merge_shards(ws, job: Job, n: int, *, force: bool = False, show_progress: bool = False, console=None,
                 command: str | None = None) -> PreprocessResult:
    """The dataset from N shards, as one unsharded run would write it; recorded as the
    preprocess stage. `command`: the shell command that makes shard {k} (for the message
    about a missing one)."""
    if n < 1:
        raise UserError(f"--merge takes the number of shards, 1 or more, got {n}")
    folders = [shard_dir(ws, job, k, n) for k in range(1, n + 1)]
    total = check_shards(ws, job, n, command)
    return run_prepared(ws, job, force=force, show_progress=show_progress, console=console,
                        merge=ShardMerge(n, [f / DOCS for f in folders], total, job))


def check_shards(ws, job: Job, n: int, command: str | None = None) -> int:
    """Every shard of N is there, made with these options from these inputs: the number of
    documents they read; else one line naming the shard, and the option or input that differs."""
    manifests = {k: _manifest(shard_dir(ws, job, k, n)) for k in range(1, n + 1)}
    missing = [k for k, m in manifests.items() if m is None or not (shard_dir(ws, job, k, n) / DOCS).is_file()]
    if missing:
        where = ws.relative(ws.meta / "shards" / job.target.name)
        command = command or "the same preprocess command with --shard {k} instead of --merge"
        names = ", ".join(f"{k}/{n}" for k in missing)
        how = (f"make it with `{command.format(k=missing[0])}`" if len(missing) == 1 else
               f"make each with `{command.format(k='K')}` for K = {', '.join(map(str, missing))}")
        raise UserError(f"shard{'s' if len(missing) > 1 else ''} {names} missing (not in {where}/)", hint=how)
    for k, manifest in manifests.items():
        problem = _difference(manifest, job)
        if problem and problem.startswith("another version"):
            raise UserError(f"shard {k}/{n} was made from {problem}",
                            hint=f"make the shards again from these inputs (--shard K/{n} for K = 1 to {n})")
        if problem:
            raise UserError(f"shard {k}/{n} was made with {problem}",
                            hint="make every shard and the merge with the same options from the same inputs "
                                 f"(run shard {k}/{n} again with this merge's options, or merge with the shard's)")
    return manifests[1]["documents"]


def _manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return read_json(path) if path.is_file() else None


def _same_run(manifest: dict[str, Any], job: Job) -> bool:
    return _difference(manifest, job) is None


def _difference(manifest: dict[str, Any], job: Job) -> str | None:
    """What the shard was made with that this run is not, in words; None if nothing."""
    theirs, mine = manifest.get("params", {}), job.params
    for key in sorted(set(theirs) | set(mine)):
        if key in SPEED_ONLY or theirs.get(key) == mine.get(key):
            continue
        name = PARAM_NAMES.get(key, "--" + key.replace("_", "-"))
        if key == "sources":
            return f"other input files ({_files(theirs.get(key))}) than this merge ({_files(mine.get(key))})"
        return f"{name} {_value(theirs.get(key))}, this merge with {name} {_value(mine.get(key))}"
    before = {h["path"]: h["sha256"] for h in manifest.get("inputs", [])}
    for entry in job.input_hashes:
        if before.get(entry["path"]) != entry["sha256"]:
            return f"another version of {entry['path']} (its content changed since)"
    return None


def _files(sources: list | None) -> str:
    paths = [s["path"] for s in sources or []]
    return ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "") if paths else "none"


def _value(value: Any) -> str:
    return "''" if value in ("", None) else json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


class Segmented(str):
    """A document's clean text that carries the tokens and language its shard found, to the
    merge's segmenter (below), through the stage's code unchanged."""

    def __new__(cls, text: str, tokens: list[str], lang: str) -> "Segmented":
        self = super().__new__(cls, text)
        self.tokens, self.lang = tokens, lang
        return self


class _ShardSegmenter:
    """tokenize() of the merge: the shard's tokens. Only a document the shard did not
    segment (none, as the shard applies the same language filter) is segmented here."""

    def __init__(self, opts: SegmentOptions):
        self.opts, self.segmenter = opts, None

    def tokenize(self, text: str) -> tuple[list[str], str]:
        if type(text) is Segmented:
            return text.tokens, text.lang
        if self.segmenter is None:
            self.segmenter = Segmenter(self.opts)
        return self.segmenter.tokenize(text)


class ShardMerge:
    """What preprocess._run takes instead of cleaning and segmenting: the shards' results,
    document by document in input order (document i is in shard i mod N)."""

    def __init__(self, n: int, paths: list[Path], total: int, job: Job):
        self.count, self.paths, self.total, self.job = n, paths, total, job

    def processor(self, base: DocProcessor) -> DocProcessor:
        results = self._results()
        processor = DocProcessor(base.clean, base.segment, base.min_chars, base.max_chars,
                                 _segmenter=_ShardSegmenter(base.segment))
        processor.clean_doc = lambda text: next(results)  # type: ignore[method-assign]
        return processor

    def _results(self) -> Iterator[tuple[str | None, str | None]]:
        n = self.count
        handles = [open(path, encoding="utf-8") for path in self.paths]
        try:
            for number in range(self.total):
                line = handles[number % n].readline()
                entry = json.loads(line) if line else {}
                if entry.get("i") != number:
                    raise UserError(f"shard {number % n + 1}/{n} does not hold document {number} where it should "
                                    f"({self.paths[number % n]})", hint=f"make shard {number % n + 1}/{n} again")
                if "drop" in entry:
                    yield None, entry["drop"]
                elif "tokens" in entry:
                    yield Segmented(entry["clean"], entry["tokens"], entry["lang"]), None
                else:
                    yield entry["clean"], None
            raise UserError(f"the inputs hold more than the {self.total:,} documents the shards read",
                            hint="make the shards again from these inputs")
        finally:
            for handle in handles:
                handle.close()
