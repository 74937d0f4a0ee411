"""`bigmodel preprocess`: raw files in, clean segmented splits and a vocabulary out.

The pipeline streams: files are read line by line, documents go to worker processes in
chunks of a bounded number at a time, results come back in order and are written at
once. Memory holds only the vocabulary counters and the de-duplication map (with
--near-dupes, also the MinHash index of every kept document: near_dupes.py).

    read, clean, filter languages (--langs), de-duplicate (exact; near with --near-dupes), split (main)
      -> segment, count, make JSON lines (workers; main too when they have enough queued)
      -> write in input order (main)

With several workers, a helper reads and cleans the first documents while the
dictionaries load (read_ahead.py). The output files are hashed on a thread while the
report is made.

Everything is written into a staging folder that replaces `data/processed/` only when the
run succeeds, so an interrupted or failed run leaves the previous output untouched.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import compress, islice, repeat
from operator import ge
from pathlib import Path
from typing import Any, Callable, Iterator

from bigmodel_cli.data.cleaning import URL_CHOICES, CleanOptions, clean_text, detect_lang
from bigmodel_cli.data.dedupe import LABEL_BITS, SeenIndex, kept_sources
from bigmodel_cli.data.parallel import OrderedWorkers
from bigmodel_cli.data.plain import plain_path
from bigmodel_cli.data.read_ahead import CleanDoc, ReadAhead
from bigmodel_cli.data.readers import (
    SAMPLE_BYTES,
    TABLE_FORMATS,
    Doc,
    Reader,
    Reject,
    check_encoding,
    detect_encoding,
    discover,
    file_format,
    printable_name,
    read_sample,
)
from bigmodel_cli.data.segment import (
    Segmenter,
    SegmentOptions,
    check_user_dict,
    describe_segmenter,
    resolve_backend,
)
from bigmodel_cli.data.stopwords import load_stopwords
from bigmodel_cli.data.store import read_records
from bigmodel_cli.data.store_process import SplitWriters
from bigmodel_cli.data.subword import KINDS as TOKENIZER_KINDS
from bigmodel_cli.data.vocab import CONTINUATION, SPECIAL_TOKENS, UNK, Vocab
from bigmodel_cli.errors import InputError, UserError
from bigmodel_cli.fileio import (
    atomic_write,
    read_json,
    sha256_in_background,
    staged_dir,
    write_json,
)
from bigmodel_cli.workspace.config import LANGS, PreprocessConfig, resolve_checked

SPLITS = ("train", "dev", "test")
# Every file preprocess writes into a dataset folder, in this version and earlier ones (the
# splits were .jsonl): a new run replaces these, and carries over anything else found there.
OWN_OUTPUTS = frozenset({f"{split}{ext}" for split in SPLITS for ext in (".parquet", ".jsonl")}
                        | {"vocab.txt", "meta.json", "report.json", "rejects.jsonl", "stopwords.txt", "user_dict.txt",
                           "tokenizer.json"})
CHUNK_DOCS = 256
SHIP_COUNTS_AT = 0.85  # of the input read, workers send their counts so far (OrderedWorkers.ship_counts)
DEDUPE_FLUSH = 1 << 16  # kept documents held in a dict before they move to the compact arrays
# Above this share of records lacking a label, the corpus is "labelled in only some
# records": an error, not a handful of bad lines to skip.
MAX_MISSING_LABEL_SHARE = 0.10
# One encoder for every line: json.dumps(..., ensure_ascii=False) builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False).encode
_json_str = json.encoder.encode_basestring  # C-accelerated, keeps non-ASCII as is


# -- options --------------------------------------------------------------------------
def resolve_config(section: dict[str, Any] | None, overrides: dict[str, Any], lang: str, inputs: list[Path],
                   split_files: dict[str, Path | None]) -> PreprocessConfig:
    """Defaults < [preprocess] in bigmodel.toml < options; every problem reported at once."""
    return resolve_checked(PreprocessConfig, section, overrides, lambda cfg: validate(cfg, lang, inputs, split_files))


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise UserError(f"--split must be three non-negative fractions train,dev,test that sum to 1 (train > 0), got '{text}'",
                        hint="for example --split 0.8,0.1,0.1")
    return parts[0], parts[1], parts[2]


def validate(cfg: PreprocessConfig, lang: str, inputs: list[Path], split_files: dict[str, Path | None]) -> list[str]:
    """Every problem with the options, so that the user fixes them all at once."""
    problems = []
    if lang not in LANGS:
        problems.append(f"--lang must be one of {', '.join(LANGS)}, got '{lang}'")
    for name in ("urls", "emails"):
        if getattr(cfg, name) not in URL_CHOICES:
            problems.append(f"--{name} must be one of {', '.join(URL_CHOICES)}, got '{getattr(cfg, name)}'")
    if cfg.on_error not in ("skip", "fail"):
        problems.append(f"--on-error must be skip or fail, got '{cfg.on_error}'")
    for name in ("min_chars", "max_chars", "max_vocab", "workers"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.max_chars and cfg.max_chars < cfg.min_chars:
        problems.append(f"--max-chars ({cfg.max_chars}) is below --min-chars ({cfg.min_chars})")
    if cfg.min_count < 1:
        problems.append(f"--min-count must be 1 or more, got {cfg.min_count}")
    problems += _filter_problems(cfg)
    if 0 < cfg.max_vocab <= 5:
        problems.append(f"--max-vocab must leave room beyond the 5 special tokens (or be 0 for no limit), got {cfg.max_vocab}")
    if cfg.tokenizer not in TOKENIZER_KINDS:
        problems.append(f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got '{cfg.tokenizer}'")
    if cfg.vocab_size < 0 or 0 < cfg.vocab_size <= len(SPECIAL_TOKENS):
        problems.append(f"--vocab-size must leave room beyond the {len(SPECIAL_TOKENS)} special tokens "
                        f"(or be 0 for the default), got {cfg.vocab_size}")
    if cfg.user_dict and not Path(cfg.user_dict).is_file():
        problems.append(f"--user-dict {cfg.user_dict}: no such file")
    elif cfg.user_dict:
        try:
            check_user_dict(cfg.user_dict)
        except UserError as exc:
            problems.append(exc.one_line())
    if cfg.stopwords not in ("builtin", "none") and not Path(cfg.stopwords).is_file():
        problems.append(f"--stopwords {cfg.stopwords}: no such file (or use builtin|none)")
    try:
        resolve_backend(cfg.segmenter)
    except UserError as exc:
        problems.append(exc.one_line())
    given = {k: v for k, v in split_files.items() if v is not None}
    if given and inputs:
        problems.append("give either input paths (split by --split) or --train/--dev/--test files, not both")
    if given and "train" not in given:
        problems.append("--dev/--test need --train as well")
    if not given:
        try:
            parse_split(cfg.split)
        except UserError as exc:
            problems.append(exc.one_line())
    return problems


# The languages --langs can keep: those detect_lang (the segmenter's test under --lang auto) tells apart.
FILTER_LANGS = ("zh", "en")


def parse_langs(text: str) -> list[str]:
    """--langs as a list ([] keeps every document)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _filter_problems(cfg: PreprocessConfig) -> list[str]:
    problems = []
    if cfg.near_dupes:
        from bigmodel_cli.data.near_dupes import THRESHOLDS, require_datasketch

        low, high = THRESHOLDS
        if not low <= cfg.near_dupes <= high:
            problems.append(f"--near-dupes must be 0 (off) or a similarity from {low} to {high}, got {cfg.near_dupes:g} "
                            "(exact copies are --dedupe's)")
        else:
            try:
                require_datasketch()
            except UserError as exc:
                problems.append(exc.one_line())
    unknown = [lang for lang in parse_langs(cfg.langs) if lang not in FILTER_LANGS]
    if unknown:
        problems.append(f"--langs takes {' and '.join(FILTER_LANGS)} (the languages the detector tells apart), "
                        f"comma-separated; got '{', '.join(unknown)}'")
    return problems


# -- per-document work ---------------------------------------------------------------
# The main process cleans, de-duplicates and assigns the split (cheap, and it needs to see
# every document in order); workers segment, write each document's JSON and count tokens
# per split (the expensive part), and send back little: the JSON and a Counter per chunk.
@dataclass
class DocProcessor:
    clean: CleanOptions
    segment: SegmentOptions
    min_chars: int
    max_chars: int
    _segmenter: Segmenter | None = field(default=None, repr=False)

    def load(self) -> "DocProcessor":
        self._segmenter = Segmenter(self.segment)
        return self

    def clean_doc(self, text: str) -> tuple[str | None, str | None]:
        """(clean text, None), or (None, drop reason)."""
        if not text or text.isspace():
            return None, "blank"  # a blank line or an empty text field
        clean = clean_text(text, self.clean, self.max_chars)
        if not clean:
            return None, "empty after cleaning"
        if len(clean) < self.min_chars:
            return None, "shorter than --min-chars"
        if self.max_chars and len(clean) > self.max_chars:
            return None, "longer than --max-chars"
        return clean, None

    def make_lines(self, payload: tuple[int, list[tuple]]) -> tuple[dict[str, bytes], list[tuple[str, int]], dict[str, list[str]]]:
        """Segment a chunk of (split, clean text, source, label) documents numbered from
        `first_id`: (JSONL bytes per split, (lang, token count) per document, the tokens of
        the train and dev documents, to count)."""
        first_id, docs = payload
        if self._segmenter is None:
            self.load()
        lines: dict[str, list[str]] = {}
        kept: dict[str, list[str]] = {"train": [], "dev": []}
        info = []
        for doc_id, (split, clean, source, label) in enumerate(docs, first_id):
            tokens, lang = self._segmenter.tokenize(clean)
            if split in kept:
                kept[split] += tokens
            line = (f'{{"id": {doc_id}, "text": {_json_str(clean)}, "tokens": {_json_tokens(clean, tokens)}, '
                    f'"lang": "{lang}", "source": {_json_str(source)}')
            if label is not None:
                line += f', "label": {_json_str(label)}'
            lines.setdefault(split, []).append(line + "}\n")
            info.append((lang, len(tokens)))
        return {split: "".join(text).encode("utf-8") for split, text in lines.items()}, info, kept


def _json_tokens(clean: str, tokens: list[str]) -> str:
    # Clean text holds no control characters (cleaning removed them), so unless it has a
    # quote or a backslash its tokens need no escaping: a join is the JSON, at a fraction of json.dumps's cost.
    if '"' in clean or "\\" in clean:
        return _encode(tokens)
    return '["' + '", "'.join(tokens) + '"]'


# -- splitting --------------------------------------------------------------------
class Splitter:
    """Seeded, stratified, streaming assignment to train/dev/test.

    For each label, documents fill shuffled blocks whose make-up matches the fractions
    exactly (0.8,0.1,0.1 gives blocks of 10 holding 8/1/1), so every label is split in
    proportion however the file is ordered, without holding the corpus in memory.
    """

    def __init__(self, fractions: tuple[float, float, float], seed: int):
        fracs = [Fraction(f).limit_denominator(1000) for f in fractions]
        size = 1
        for f in fracs:
            size = size * f.denominator // _gcd(size, f.denominator)
        counts = [int(f * size) for f in fracs]
        counts[0] += size - sum(counts)
        self.block = [s for s, n in zip(SPLITS, counts) for _ in range(n)]
        self.rng = random.Random(seed)
        self.queues: dict[Any, list[str]] = {}

    def assign(self, label: Any) -> str:
        queue = self.queues.get(label)
        if not queue:
            queue = self.block[:]
            self.rng.shuffle(queue)
            self.queues[label] = queue
        return queue.pop()


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# -- statistics ------------------------------------------------------------------
def _percentiles(hist: Counter, qs=(50, 90, 95, 99)) -> dict[str, float]:
    total = sum(hist.values())
    if not total:
        return {}
    out: dict[str, float] = {}
    items = sorted(hist.items())
    for q in qs:
        need, seen = q / 100 * total, 0
        for value, count in items:
            seen += count
            if seen >= need:
                out[f"p{q}"] = value
                break
    out["max"] = items[-1][0]
    out["mean"] = round(sum(v * c for v, c in items) / total, 2)
    return out


@dataclass
class Stats:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    dropped: Counter = field(default_factory=Counter)
    duplicates: int = 0
    conflicts: int = 0
    conflict_examples: list = field(default_factory=list)
    near_duplicates: int = 0
    near_examples: list = field(default_factory=list)
    language_dropped: Counter = field(default_factory=Counter)  # detected language -> documents dropped by --langs
    overlap: Counter = field(default_factory=Counter)  # dev/test docs also in train
    missing_labels: int = 0
    unlabelled: int = 0  # kept documents without a label (from files that have none)
    first_unlabelled: str | None = None
    reject_examples: list = field(default_factory=list)
    split_docs: Counter = field(default_factory=Counter)
    split_tokens: Counter = field(default_factory=Counter)
    labels: dict = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    langs: Counter = field(default_factory=Counter)
    char_hist: Counter = field(default_factory=Counter)
    token_hist: Counter = field(default_factory=Counter)
    train_counts: Counter = field(default_factory=Counter)
    dev_counts: Counter = field(default_factory=Counter)
    chars: int = 0


# -- the stage ------------------------------------------------------------------
@dataclass
class PreprocessResult:
    skipped: bool
    report: dict[str, Any]
    record: dict[str, Any] | None
    out_dir: Path


def preprocess(
    ws,
    inputs: list[Path] | None = None,
    *,
    train: Path | None = None,
    dev: Path | None = None,
    test: Path | None = None,
    config: PreprocessConfig | None = None,
    lang: str = "auto",
    seed: int = 42,
    fmt: str | None = None,
    label_required: bool = False,
    force: bool = False,
    show_progress: bool = False,
    console=None,
    dataset: str | None = None,
) -> PreprocessResult:
    """Run the preprocess stage in workspace `ws` (a `Workspace`). See the module docstring.
    `dataset`: write data/NAME/ (`--as NAME`) instead of data/processed/, the default dataset."""
    job = prepare(ws, inputs, train=train, dev=dev, test=test, config=config, lang=lang, seed=seed, fmt=fmt,
                  label_required=label_required, dataset=dataset)
    return run_prepared(ws, job, force=force, show_progress=show_progress, console=console)


@dataclass
class Job:
    """A checked preprocess run: the options, the files in the order they are read, and what
    the run record compares to skip an unchanged run (shards.py runs a part of it, or
    merges the parts)."""

    cfg: PreprocessConfig
    lang: str
    seed: int
    label_required: bool
    target: Path
    stage: str
    plan: list
    lines_at_most: int | None
    backend: str
    params: dict[str, Any]
    input_hashes: list[dict[str, str]]


def prepare(ws, inputs: list[Path] | None = None, *, train: Path | None = None, dev: Path | None = None,
            test: Path | None = None, config: PreprocessConfig | None = None, lang: str = "auto", seed: int = 42,
            fmt: str | None = None, label_required: bool = False, dataset: str | None = None) -> Job:
    """Check the options and every input file (before anything is written); hash the inputs."""
    from bigmodel_cli.workspace.layout import dataset_stage

    cfg = config or PreprocessConfig()
    target = ws.dataset(dataset)
    stage = dataset_stage(dataset)
    _refuse_foreign_folder(ws, target, stage)
    inputs = [Path(p) for p in (inputs or [])]
    split_files = {"train": train, "dev": dev, "test": test}
    if len(inputs) == 1 and not any(split_files.values()) and inputs[0].is_dir():
        from bigmodel_cli.data.tables import dataset_dict_splits, is_dataset_dict

        if is_dataset_dict(inputs[0]):  # a saved DatasetDict: its splits are given, as --train/--dev/--test give them
            split_files, inputs = {"train": None, "dev": None, "test": None, **dataset_dict_splits(inputs[0])}, []
    if not inputs and not any(split_files.values()):
        if ws.raw.is_dir() and any(p for p in ws.raw.iterdir() if not p.name.startswith(".")):
            inputs = [ws.raw]
        else:
            raise UserError("no input given", hint=f"pass a file or folder (bigmodel preprocess corpus.txt), or put files in {ws.raw}")
    problems = validate(cfg, lang, inputs, split_files)
    if problems:
        raise UserError("; ".join(problems))

    # Sources in split order; every file is checked (exists, not empty, not binary,
    # decodable, known format) before anything is written.
    if any(split_files.values()):
        sources = [(s, discover([Path(p)], fmt)) for s, p in split_files.items() if p is not None]
    else:
        sources = [(None, discover(inputs, fmt))]
    plan = []
    lines_at_most: int | None = 0  # None: some file is longer than its sample
    for split, files in sources:
        for path in files:
            if file_format(path, fmt) in TABLE_FORMATS:
                lines_at_most = _check_table(path, fmt, cfg, label_required, lines_at_most)
                plan.append((split, path, file_format(path, fmt), "utf-8"))  # Arrow strings are UTF-8
                continue
            sample = read_sample(path)
            if lines_at_most is not None:
                lines_at_most = None if len(sample) >= SAMPLE_BYTES else lines_at_most + sample.count(b"\n") + 1
            if cfg.encoding == "auto":
                encoding = detect_encoding(path, sample)
            else:
                if not sample:
                    raise InputError(path, "file is empty")
                encoding = check_encoding(path, cfg.encoding)
            plan.append((split, path, file_format(path, fmt), encoding))

    backend = resolve_backend(cfg.segmenter)
    params = {**dataclasses.asdict(cfg), "lang": lang, "seed": seed, "format": fmt, "label_required": label_required,
              "segmenter_resolved": backend,
              "sources": [{"split": s, "path": printable_name(ws.relative(p)), "format": f, "encoding": e}
                          for s, p, f, e in plan]}
    extra_inputs = [Path(p) for p in (cfg.user_dict, cfg.stopwords if cfg.stopwords not in ("builtin", "none") else "") if p]
    extra_inputs += _dataset_infos(plan)
    # File names that are not UTF-8 are recorded with those bytes as \xNN: JSON cannot hold them.
    input_hashes = [{**h, "path": printable_name(h["path"])} for h in ws.hash_paths([p for _, p, _, _ in plan] + extra_inputs)]
    return Job(cfg, lang, seed, label_required, target, stage, plan, lines_at_most, backend, params, input_hashes)


def run_prepared(ws, job: Job, *, force: bool = False, show_progress: bool = False, console=None,
                 merge=None) -> PreprocessResult:
    """Run the stage as `job` says and record it. `merge` (shards.py's ShardMerge): take each
    document's cleaning and segmentation from the shards' files instead of doing them here."""
    from bigmodel_cli.workspace.records import Done, run_stage

    target = job.target

    def work() -> Done:
        with staged_dir(target.with_name(f".{target.name}.staging-{os.getpid()}"), target,
                        keep=lambda name: name not in OWN_OUTPUTS) as staging:
            report, output_hashes = _run(ws, job.cfg, job.lang, job.seed, job.plan, job.backend, job.label_required,
                                         staging, show_progress, console, job.lines_at_most, merge)
        outputs = sorted(p for p in target.iterdir() if p.is_file() and p.name in OWN_OUTPUTS)
        known = {target / path.name: sha for path, sha in output_hashes().items()}
        return Done(report, outputs, _headline(report), known_hashes=known)

    lock = "preprocess" if job.stage == "preprocess" else f"preprocess --as {target.name}"
    outcome = run_stage(ws, job.stage, job.params, job.input_hashes, work, lock=lock,
                        sections=("project", "preprocess"), may_skip=not force)
    if outcome.skipped:
        report_path = target / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
        return PreprocessResult(True, report, outcome.record, target)
    return PreprocessResult(False, outcome.value, outcome.record, target)


def _check_table(path: Path, fmt: str | None, cfg: PreprocessConfig, label_required: bool,
                 lines_at_most: int | None) -> int | None:
    """Check a Parquet or Arrow file's columns before anything is written; `lines_at_most`
    with its rows added (None once a file's number of rows is not known)."""
    from bigmodel_cli.data.tables import check_table

    rows = check_table(path, file_format(path, fmt), cfg.text_field, cfg.label_field, label_required)
    return None if rows is None or lines_at_most is None else lines_at_most + rows


def _dataset_infos(plan) -> list[Path]:
    """dataset_info.json of the saved `datasets` folders read: their ClassLabel names make the labels."""
    tables = [path for _, path, f, _ in plan if f in TABLE_FORMATS]
    if not tables:
        return []
    from bigmodel_cli.data.tables import dataset_info_files

    return dataset_info_files(tables)


def _refuse_foreign_folder(ws, target: Path, stage: str) -> None:
    """preprocess replaces its dataset folder whole: refuse one that holds files but was not
    made by preprocess (no meta.json, no record), such as a user's own data/NAME/."""
    if target == ws.processed or not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or not target.is_dir():
        raise UserError(f"{ws.relative(target)} is not a folder bigmodel made", hint="pick another --as NAME")
    ours = (target / "meta.json").is_file() or ws.last_record(stage, status=None) is not None
    if not ours and any(target.iterdir()):
        raise UserError(f"{ws.relative(target)}/ holds files that preprocess did not write; it replaces its dataset "
                        "folder whole, so it will not write there", hint="pick another --as NAME, or move those files")


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "documents_kept": report["documents"]["kept"],
        "duplicates": report["duplicates"],
        "rejected": report["documents"]["rejected"],
        "vocab_size": report["vocab_size"],
        "oov_rate_dev": report["oov_dev"].get("token_rate"),
        "docs_per_s": report["throughput"]["docs_per_s"],
    }


def _doc_stream(ws, plan, cfg: PreprocessConfig, label_required: bool, progress,
                ahead: ReadAhead | None = None) -> Iterator[tuple[str | None, Doc | CleanDoc | Reject]]:
    """The records of every file in order; those the read-ahead helper spooled come from
    it (already cleaned), and each file is read on from where it stopped."""
    done_bytes = 0
    for index, (split, path, fmt, encoding) in enumerate(plan):
        resume = None
        if ahead is not None:
            for batch in ahead.batches(index):
                progress(done_bytes + batch.position)
                for record in ahead.records(batch):
                    yield split, record
            resume = ahead.resume(index)
        if resume != "done":
            reader = _reader(ws, plan, cfg, label_required, index, resume)
            try:
                for i, item in enumerate(reader):
                    if i % 512 == 0:
                        progress(done_bytes + reader.position())
                    yield split, item
            finally:
                reader.close()
        done_bytes += path.stat().st_size
        progress(done_bytes)


def _reader(ws, plan, cfg: PreprocessConfig, label_required: bool, index: int,
            resume: tuple[int, bool] | None = None) -> Reader:
    _, path, fmt, encoding = plan[index]
    skip, labelled = resume or (0, None)
    return Reader(path, fmt, encoding, cfg.text_field, cfg.label_field, label_required, name=ws.relative(path),
                  skip_lines=skip, labelled=labelled, blank_lines=True)


def _run(ws, cfg, lang, seed, plan, backend, label_required, staging: Path, show_progress,
         console, lines_at_most: int | None = None, merge=None) -> tuple[dict[str, Any], Callable[[], dict[Path, str]]]:
    """Writes the outputs into `staging`; returns the report, and a function that gives
    the hashes of the data files (taken on a thread while the report is made). With
    `merge`, the cleaning and segmentation come from the shards' files, in this process
    (what is left to do is cheap), and everything else is this same code."""
    started = time.perf_counter()
    clean_opts, segment_opts = _options(cfg, lang, backend, staging)
    # With one worker the segmenter loads on first use: a run whose first records are bad
    # (under --strict) fails without waiting for the dictionary.
    processor = DocProcessor(clean_opts, segment_opts, cfg.min_chars, cfg.max_chars)
    chunks_at_most = None if lines_at_most is None else -(-lines_at_most // CHUNK_DOCS)
    workers, workers_warning = worker_count(cfg.workers, chunks_at_most)
    if merge is not None:
        processor, workers, workers_warning = merge.processor(processor), 1, None
    given_splits = plan[0][0] is not None
    splitter = None if given_splits else Splitter(parse_split(cfg.split), seed)
    total_bytes = sum(p.stat().st_size for _, p, _, _ in plan)
    bar = _Bar(_show_bar(show_progress, console), console, total_bytes)

    # The splits' writer turns the JSON lines the workers send into the Parquet store, in a
    # process of its own (data/store_process.py).
    writers = SplitWriters(staging, list(SPLITS))
    files = writers.files
    # backslashreplace: a reject's raw text or reason may hold what UTF-8 cannot encode
    # (a lone surrogate from a JSON escape); the reject is still written, never a crash.
    rejects = open(staging / "rejects.jsonl", "w", encoding="utf-8", errors="backslashreplace")
    docs = _DocumentPass(cfg, splitter, given_splits, rejects, bar, total_bytes, started)
    runner, ahead = _start_workers(ws, plan, cfg, label_required, processor, workers, staging)
    try:
        records = _doc_stream(ws, plan, cfg, label_required, docs.on_bytes, ahead)
        with bar:
            for metas, info, write in runner.map(docs.chunks(records, processor.clean_doc, runner.ship_counts)):
                write(files)
                docs.tally(metas, info)
                docs.on_bytes(None)
    except BaseException:
        runner.close(abort=True)
        writers.abort()
        raise
    finally:
        rejects.close()
        try:
            writers.close()
        finally:
            if ahead is not None:
                ahead.close()
    output_hashes = sha256_in_background([staging / f"{s}.parquet" for s in SPLITS] + [staging / "rejects.jsonl"])
    stats = _finish_workers(runner, docs.stats, staging)
    elapsed = time.perf_counter() - started

    _check_outcome(stats, plan)
    vocab, meta = _write_vocab_and_meta(stats, cfg, lang, clean_opts, segment_opts, staging)
    report = _report(stats, vocab, meta, elapsed, workers, plan, given_splits)
    if cfg.tokenizer != "word":
        report.update(_train_tokenizer(cfg, staging))
    if workers_warning:
        report["warnings"].insert(0, workers_warning)
    if merge is not None:
        report["shards"] = merge.count
    write_json(staging / "report.json", report)
    return report, output_hashes


def _options(cfg: PreprocessConfig, lang: str, backend: str, staging: Path) -> tuple[CleanOptions, SegmentOptions]:
    """The cleaning and segmentation options; a user dictionary is copied into the outputs,
    so that predict replays the same segmentation."""
    user_dict = None
    if cfg.user_dict:
        user_dict = staging / "user_dict.txt"
        shutil.copyfile(cfg.user_dict, user_dict)
    segment_opts = SegmentOptions(lang=lang, backend=backend, hmm=cfg.hmm, user_dict=str(user_dict) if user_dict else None,
                                  lowercase=cfg.lowercase, stem=cfg.stem)
    clean_opts = CleanOptions(nfkc=cfg.nfkc, strip_html=cfg.strip_html, urls=cfg.urls, emails=cfg.emails)
    return clean_opts, segment_opts


def _start_workers(ws, plan, cfg: PreprocessConfig, label_required: bool, processor: DocProcessor, workers: int,
                   staging: Path) -> tuple[OrderedWorkers, ReadAhead | None]:
    """The worker processes, and with more than one the read-ahead helper (None otherwise)."""
    if workers <= 1:
        return OrderedWorkers(processor.make_lines, workers, staging / "shards"), None
    # The dictionaries load once, here, and the workers inherit them by forking: they
    # share those pages (less private memory per worker) and none of them pays for its
    # own load. Meanwhile a helper reads and cleans the first documents on
    # another core.
    (staging / "shards").mkdir()
    # The helper stops at the first Parquet or Arrow file, which the main process reads
    # itself: pyarrow is not used in a forked process, whose copy of pyarrow's threads and
    # allocator state may not be sound. Its records are the same either way.
    ahead = ReadAhead(lambda index: _reader(ws, plan, cfg, label_required, index)
                      if index < len(plan) and plan[index][2] not in TABLE_FORMATS else None,
                      processor.clean_doc, staging / "shards" / "read-ahead")
    try:
        processor.load()
        runner = OrderedWorkers(processor.make_lines, workers, staging / "shards")
    except BaseException:
        ahead.close()
        raise
    ahead.stop()
    return runner, ahead


class _DocumentPass:
    """The main process's share of the work, in input order: count, reject, clean,
    de-duplicate and assign a split, then hand the kept documents to the workers in chunks;
    and tally what the workers send back."""

    def __init__(self, cfg: PreprocessConfig, splitter: Splitter | None, given_splits: bool, rejects, bar: _Bar,
                 total_bytes: int, started: float):
        self.cfg, self.splitter, self.given_splits = cfg, splitter, given_splits
        self.strict = cfg.on_error == "fail"
        self.rejects, self.bar, self.total_bytes, self.started = rejects, bar, total_bytes, started
        self.stats = Stats()
        self.seen = SeenIndex(DEDUPE_FLUSH)  # every kept document: hash of its clean text -> (id, label, split)
        self.near = None  # every kept document's MinHash, with --near-dupes
        if cfg.near_dupes:
            from bigmodel_cli.data.near_dupes import NearDuplicates

            self.near = NearDuplicates(cfg.near_dupes)
        self.langs = frozenset(parse_langs(cfg.langs))
        self.label_ids: dict[str | None, int] = {None: 0}
        self.labels_by_id: list[str | None] = [None]
        self.read_bytes = 0

    def on_bytes(self, done: int | None) -> None:  # None: the same bytes, more documents
        self.read_bytes = self.read_bytes if done is None else done
        read = self.stats.read
        self.bar.update(done, read, read / max(time.perf_counter() - self.started, 1e-9))

    def reject(self, item: Reject, split: str | None) -> None:
        if self.strict:
            raise UserError(f"{item.source}: {item.reason}", hint="fix the record, or drop --strict to skip bad records into rejects.jsonl")
        stats = self.stats
        stats.rejected += 1
        if item.missing_label:
            stats.missing_labels += 1
        if len(stats.reject_examples) < 5:
            stats.reject_examples.append(f"{item.source}: {item.reason}")
        self.rejects.write(_encode({"source": item.source, "reason": item.reason, "split": split, "raw": item.raw}) + "\n")

    def chunks(self, records: Iterator[tuple[str | None, Doc | CleanDoc | Reject]], clean_doc: Callable,
               ship_counts: Callable[[], None]) -> Iterator[tuple[list, tuple[int, list[tuple]]]]:
        """(metas, (first id, documents)) for each chunk of CHUNK_DOCS kept documents. What
        the per-record loop uses is bound to local names first: it runs for every record."""
        stats, seen, reject, splitter = self.stats, self.seen, self.reject, self.splitter
        label_ids, labels_by_id, given_splits, dedupe = self.label_ids, self.labels_by_id, self.given_splits, self.cfg.dedupe
        near, langs = self.near, self.langs
        if near is not None:
            # In this process, a batch at a time: numpy makes a signature cheap beside the
            # index lookup that follows, which has to run here, in input order.
            from bigmodel_cli.data.near_dupes import signatures
        metas, docs, next_id, shipped = [], [], 0, False
        for batch in _batches(records, CHUNK_DOCS):
            if not shipped and self.read_bytes >= SHIP_COUNTS_AT * self.total_bytes:
                ship_counts()
                shipped = True
            cleaned = []
            for split, item in batch:
                if isinstance(item, Reject):
                    reject(item, split)
                    continue
                stats.read += 1
                clean, reason = item.clean if type(item) is CleanDoc else clean_doc(item.text)
                if clean is None:
                    stats.dropped[reason] += 1
                    continue
                if langs and (doc_lang := detect_lang(clean)) not in langs:
                    stats.dropped["language"] += 1
                    stats.language_dropped[doc_lang] += 1
                    continue
                cleaned.append((split, item, clean))
            if dedupe:
                keys = [hash(clean) for _, _, clean in cleaned]
                older = seen.find_flushed(keys)  # one search for the batch
            if near is not None:
                sketches = signatures([clean for _, _, clean in cleaned])
            for k, (split, item, clean) in enumerate(cleaned):
                if dedupe:
                    first = older[k]
                    if first is None:
                        first = seen.recent.get(keys[k])
                    if first is not None:
                        first_id, first_label, first_split = SeenIndex.unpack(first)
                        if not given_splits or first_split == split:
                            _duplicate(stats, first_id, labels_by_id[first_label], item)
                            continue
                        if first_split == "train":
                            stats.overlap[split] += 1
                if near is not None:
                    # Given splits are each de-duplicated apart, as exact copies are.
                    match = near.find(sketches[k], split)
                    if match is not None:
                        _near_duplicate(stats, match, item)
                        continue
                    near.add(next_id + len(docs), sketches[k], item.label, split)
                if dedupe and first is None:
                    label_id = label_ids.get(item.label)
                    if label_id is None:
                        if len(labels_by_id) >= 1 << LABEL_BITS:
                            raise UserError(f"{item.source}: more than {1 << LABEL_BITS:,} distinct labels",
                                            hint="check --label-field: it names a column of labels, not of text")
                        label_id = label_ids[item.label] = len(labels_by_id)
                        labels_by_id.append(item.label)
                    seen.add(keys[k], SeenIndex.pack(next_id + len(docs), label_id, split))
                if split is None:
                    split = splitter.assign(item.label)
                metas.append((split, item, len(clean)))
                docs.append((split, clean, item.source, item.label))
                if len(docs) >= CHUNK_DOCS:
                    yield metas, (next_id, docs)
                    next_id += len(docs)
                    metas, docs = [], []
            seen.flush_if_full()
        if docs:
            yield metas, (next_id, docs)

    def tally(self, metas: list, info: list[tuple[str, int]]) -> None:
        """Count a chunk's kept documents, with the language and token count the workers found."""
        stats = self.stats
        for (split, doc, n_chars), (doc_lang, n_tokens) in zip(metas, info):
            if doc.label is not None:
                stats.labels[split][doc.label] += 1
            else:
                stats.unlabelled += 1
                stats.first_unlabelled = stats.first_unlabelled or doc.source
            stats.kept += 1
            stats.split_docs[split] += 1
            stats.split_tokens[split] += n_tokens
            stats.langs[doc_lang] += 1
            stats.char_hist[n_chars] += 1
            stats.token_hist[n_tokens] += 1
            stats.chars += n_chars


def _finish_workers(runner: OrderedWorkers, stats: Stats, staging: Path) -> Stats:
    """Stop the workers and take their token counts; name the kept copy of each label
    conflict by its source, read back from the outputs."""
    runner.close()
    shutil.rmtree(staging / "shards", ignore_errors=True)
    stats.train_counts = runner.counts.get("train", Counter())
    stats.dev_counts = runner.counts.get("dev", Counter())
    examples = stats.conflict_examples + stats.near_examples
    if examples:
        sources = kept_sources([staging / f"{s}.parquet" for s in SPLITS], {e["kept"] for e in examples})
        for example in examples:
            example["kept"] = sources.get(example["kept"])
    return stats


def _write_vocab_and_meta(stats: Stats, cfg: PreprocessConfig, lang: str, clean_opts: CleanOptions,
                          segment_opts: SegmentOptions, staging: Path) -> tuple[Vocab, dict[str, Any]]:
    """vocab.txt, stopwords.txt and meta.json: what the later stages read to encode text
    the way it was encoded here."""
    vocab = Vocab.build(stats.train_counts, cfg.min_count, cfg.max_vocab, pieces=cfg.pieces)
    with atomic_write(staging / "vocab.txt") as handle:
        vocab.save(handle)
    stop = load_stopwords(cfg.stopwords, lang)
    with atomic_write(staging / "stopwords.txt") as handle:
        handle.writelines(f"{w}\n" for w in sorted(stop))
    labels = sorted(set().union(*[set(c) for c in stats.labels.values()]))
    meta = {
        "clean": dataclasses.asdict(clean_opts),
        "segment": {**dataclasses.asdict(segment_opts), "user_dict": "user_dict.txt" if segment_opts.user_dict else None},
        "segmenter": describe_segmenter(segment_opts),
        "stopwords": cfg.stopwords if cfg.stopwords in ("builtin", "none") else f"file:{cfg.stopwords}",
        "stopword_count": len(stop),
        "labels": labels,
        "vocab": {"min_count": cfg.min_count, "max_vocab": cfg.max_vocab, "pieces": cfg.pieces, "size": len(vocab)},
        "splits": {s: stats.split_docs[s] for s in SPLITS},
        "near_dupes": _near_dupes_options(cfg.near_dupes),
        "langs": parse_langs(cfg.langs),
    }
    write_json(staging / "meta.json", meta)
    return vocab, meta


def _near_dupes_options(threshold: float) -> dict[str, Any]:
    if not threshold:
        return {"threshold": 0.0}
    from bigmodel_cli.data.near_dupes import NUM_PERM, SEED, SHINGLE

    return {"threshold": threshold, "shingle_chars": SHINGLE, "num_perm": NUM_PERM, "seed": SEED}


def _train_tokenizer(cfg: PreprocessConfig, staging: Path) -> dict[str, Any]:
    """tokenizer.json trained on the cleaned training text, with vocab.txt and meta.json
    rewritten to match it; the report's vocabulary figures, measured on the dev split."""
    from bigmodel_cli.data.subword import default_size, train_tokenizer
    from bigmodel_cli.data.tokenizer import save_tokenizer

    started = time.perf_counter()
    tokenizer = train_tokenizer(cfg.tokenizer, _split_texts(staging / "train.parquet"), vocab_size=cfg.vocab_size,
                                min_frequency=cfg.min_count, lowercase=cfg.lowercase, nfkc=cfg.nfkc)
    seconds = time.perf_counter() - started
    save_tokenizer(tokenizer, staging, {"kind": cfg.tokenizer, "vocab_size": default_size(cfg.tokenizer, cfg.vocab_size),
                                        "lowercase": cfg.lowercase, "nfkc": cfg.nfkc, "min_frequency": cfg.min_count})
    meta = read_json(staging / "meta.json")
    meta["vocab"] = {"tokenizer": cfg.tokenizer, "size": tokenizer.get_vocab_size(with_added_tokens=True)}
    write_json(staging / "meta.json", meta)
    tokens = unk = 0
    unk_id = tokenizer.token_to_id(UNK)
    for batch in _batches(_split_texts(staging / "dev.parquet"), 1000):
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            tokens += len(encoding.ids)
            unk += encoding.ids.count(unk_id)
    return {"tokenizer": {"kind": cfg.tokenizer, "seconds": round(seconds, 3)},
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True), "vocab_pieces": 0,
            "oov_dev": {"token_rate": None, "unk_rate": round(unk / tokens, 4) if tokens else None, "type_rate": None}}


def _split_texts(path: Path) -> Iterator[str]:
    return (record["text"] for record in read_records(path, columns=["text"]))


class _Bar:
    """The progress bar: bytes read, documents, documents/s. rich is imported only to
    show one (its import is not free)."""

    def __init__(self, show: bool, console, total_bytes: int):
        self.show, self.console, self.total, self.done = show, console, total_bytes, 0
        self.progress = None

    def __enter__(self) -> "_Bar":
        if self.show:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("[bold]preprocess"), BarColumn(), DownloadColumn(),
                                     TextColumn("{task.fields[docs]:,} docs"), TextColumn("{task.fields[rate]:,.0f} docs/s"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("preprocess", total=self.total, completed=self.done, docs=0, rate=0.0)
        return self

    def update(self, done: int | None, docs: int, rate: float) -> None:
        if done is not None:
            self.done = done
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, docs=docs, rate=rate)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _show_bar(show_progress: bool, console) -> bool:
    # A bar only on a terminal: in a log or a pipe it would print a line of its own
    # around the summary or the one-line error.
    return show_progress and (console is None or console.is_terminal)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def _duplicate(stats: Stats, first_id: int, first_label: str | None, doc: Doc) -> None:
    stats.duplicates += 1
    stats.dropped["duplicate"] += 1
    if first_label != doc.label:
        stats.conflicts += 1
        if len(stats.conflict_examples) < 5:
            # "kept" holds the kept copy's document id until the run ends, then its source.
            stats.conflict_examples.append({"kept": first_id, "kept_label": first_label, "dropped": doc.source,
                                            "dropped_label": doc.label})


def _near_duplicate(stats: Stats, match: tuple[int, float, str | None], doc: Doc) -> None:
    kept_id, similarity, kept_label = match
    stats.near_duplicates += 1
    stats.dropped["near duplicate"] += 1
    if len(stats.near_examples) < 5:
        # "kept" holds the kept document's id until the run ends, then its source (as for conflicts).
        stats.near_examples.append({"kept_id": kept_id, "kept": kept_id, "dropped": doc.source,
                                    "similarity": round(similarity, 3)})
    if kept_label != doc.label:
        stats.conflicts += 1
        if len(stats.conflict_examples) < 5:
            stats.conflict_examples.append({"kept": kept_id, "kept_label": kept_label, "dropped": doc.source,
                                            "dropped_label": doc.label, "near_duplicate": True})


def worker_count(requested: int, chunks_at_most: int | None) -> tuple[int, str | None]:
    """Worker processes to start (0 asked: one per core), and a warning when fewer than
    asked. More than twice the cores this process may use only compete for them (each
    also holds its own memory), and a worker with no chunk of documents to take does
    nothing but start."""
    if plain_path():  # one process, so no pool and no read-ahead helper (report: workers 1, segmenter plain)
        return 1, None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cap = max(2 * cores, 4)
    workers = min(requested or cores, cap)
    if chunks_at_most is not None:
        workers = min(workers, max(chunks_at_most, 1))
    warning = None
    if requested > cap:
        warning = (f"--workers {requested} is more than twice the {cores} cores this process may use; "
                   f"{workers} worker(s) started")
    return workers, warning


def _check_outcome(stats: Stats, plan) -> None:
    files = ", ".join(printable_name(str(p)) for _, p, _, _ in plan[:3]) + (" ..." if len(plan) > 3 else "")
    labelled = sum(sum(c.values()) for c in stats.labels.values())
    total = labelled + stats.missing_labels
    if stats.missing_labels and labelled and stats.missing_labels > MAX_MISSING_LABEL_SHARE * total:
        first = stats.reject_examples[0] if stats.reject_examples else ""
        raise UserError(
            f"labels in only some records: {stats.missing_labels:,} of {total:,} records have no label (first: {first})",
            hint="give every record a label, or none (then the corpus is used unlabelled)")
    if stats.unlabelled and labelled:
        # Labelled and unlabelled files mixed: the unlabelled documents are already in the
        # splits, so they cannot be skipped like a few bad records; the run fails.
        total = labelled + stats.unlabelled
        raise UserError(
            f"labels in only some records: {stats.unlabelled:,} of {total:,} records have no label "
            f"(first: {stats.first_unlabelled})",
            hint="give every record a label, or none (then the corpus is used unlabelled)")
    if stats.rejected and stats.read == stats.dropped["blank"]:
        raise UserError(f"every record was rejected ({stats.rejected:,}); first: {stats.reject_examples[0]}",
                        hint="check --format, --text-field and --encoding")
    if stats.kept == 0:
        reasons = ", ".join(f"{n:,} {r}" for r, n in stats.dropped.most_common()) or "no documents"
        raise UserError(f"no documents kept from {files} ({reasons})", hint="check the input and --min-chars/--max-chars")
    if stats.split_docs["train"] == 0:
        raise UserError("the training split is empty", hint="give more documents or a larger train fraction in --split")


def top_counts(counts: Counter, n: int) -> list[tuple[str, int]]:
    """The n most frequent tokens, ties broken by the token: the same list whatever order
    the documents were counted in (most_common keeps insertion order on ties, which the
    number of workers changes). C loops throughout, so it takes milliseconds."""
    if len(counts) <= n:
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    floor = heapq.nlargest(n, counts.values())[-1]
    candidates = compress(counts.items(), map(ge, counts.values(), repeat(floor)))
    return sorted(candidates, key=lambda kv: (-kv[1], kv[0]))[:n]


def _report(stats: Stats, vocab: Vocab, meta: dict, elapsed: float, workers: int, plan, given_splits: bool) -> dict[str, Any]:
    dev_tokens = sum(stats.dev_counts.values())
    index = vocab.index
    dev_oov_types = {t: c for t, c in stats.dev_counts.items() if t not in index}
    dev_oov = sum(dev_oov_types.values())
    # With pieces an OOV word is split, not lost; [UNK] remains only for unseen characters.
    unk_id = vocab.id(UNK)
    dev_unk = sum(c for t, c in dev_oov_types.items() if unk_id in vocab.encode([t])) if meta["vocab"]["pieces"] else dev_oov
    warnings = []
    if stats.conflicts:
        warnings.append(f"{stats.conflicts:,} duplicates carried a different label from the copy kept (see label_conflicts)")
    if stats.overlap:
        warnings.append("documents also in train (possible leakage): " + ", ".join(f"{s} {n:,}" for s, n in stats.overlap.items()))
    n_labels = len(meta["labels"])
    if n_labels == 1:
        warnings.append(f"only one label ('{meta['labels'][0]}'): a classifier needs at least two")
    if stats.rejected:
        warnings.append(f"{stats.rejected:,} bad records skipped, written to rejects.jsonl")
    return {
        "documents": {"read": stats.read + stats.rejected, "kept": stats.kept, "rejected": stats.rejected,
                      "dropped": dict(stats.dropped)},
        "duplicates": stats.duplicates,
        "near_duplicates": {"threshold": meta["near_dupes"]["threshold"], "count": stats.near_duplicates,
                            "examples": stats.near_examples},
        "language_filter": {"langs": meta["langs"], "dropped": dict(sorted(stats.language_dropped.items()))},
        "label_conflicts": {"count": stats.conflicts, "examples": stats.conflict_examples},
        "splits": {s: stats.split_docs[s] for s in SPLITS},
        "splits_given": given_splits,
        "overlap_with_train": dict(stats.overlap),
        "tokens": {s: stats.split_tokens[s] for s in SPLITS},
        "types_train": len(stats.train_counts),
        "vocab_size": len(vocab),
        # entries there only as pieces: `##c`, and characters not frequent enough as words
        "vocab_pieces": sum(1 for t in vocab.tokens[len(SPECIAL_TOKENS):]
                            if t.startswith(CONTINUATION) or stats.train_counts.get(t, 0) < meta["vocab"]["min_count"])
                        if meta["vocab"]["pieces"] else 0,
        "oov_dev": {"token_rate": round(dev_oov / dev_tokens, 4) if dev_tokens else None,
                    "unk_rate": round(dev_unk / dev_tokens, 4) if dev_tokens else None,
                    "type_rate": round(len(dev_oov_types) / len(stats.dev_counts), 4) if stats.dev_counts else None},
        "lengths": {"chars": _percentiles(stats.char_hist), "tokens": _percentiles(stats.token_hist)},
        "top_tokens": top_counts(stats.train_counts, 20),
        "labels": {s: dict(sorted(c.items())) for s, c in stats.labels.items() if c},
        "langs": dict(stats.langs),
        "rejects": {"count": stats.rejected, "first": stats.reject_examples},
        "segmenter": meta["segmenter"],
        "stopwords": meta["stopwords"],
        "files": [{"path": printable_name(str(p)), "format": f, "encoding": e, "split": s} for s, p, f, e in plan],
        "workers": workers,
        "seconds": round(elapsed, 3),
        "throughput": {"docs_per_s": round((stats.read + stats.rejected) / elapsed, 1) if elapsed else None,
                       "chars_per_s": round(stats.chars / elapsed, 1) if elapsed else None},
        "warnings": warnings,
    }
