"""`bigmodel predict`: raw text in, labels and class probabilities out (JSONL).

Texts are cleaned and segmented exactly as the classifier's training data was, from the
run folder's copy of preprocess's meta.json (never re-specified by hand), cut to the run's
max_len and classified in batches of similar length. Files are read as preprocess reads
them (txt, jsonl, csv, tsv, compressed, any encoding it detects) and streamed in chunks,
so memory stays flat and output starts at once.

One line per document: {"text", "label", "score", "probs": {label: p, ...}} with the
`top_k` most probable classes, plus "source" (file:line) for files and "gold" when the
input carries a label.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from bigmodel_cli.data.cleaning import MAX_CHARS
from bigmodel_cli.errors import InputError, UserError
from bigmodel_cli.fileio import json_line

CHUNK = 1024  # documents read, segmented and classified at a time


@dataclass
class Item:
    text: str
    source: str | None = None
    gold: str | None = None


class Predictor:
    """A finetuned run, ready to classify raw text."""

    def __init__(self, folder: Path, batch_size: int = 64):
        from bigmodel_cli.data.tokenizer import Encoder
        from bigmodel_cli.fileio import read_json
        from bigmodel_cli.model.runs import load_model

        self.folder, self.batch_size = folder, batch_size
        self.model, self.checkpoint = load_model(folder)
        self.labels = list(self.model.cfg.labels)
        train = read_json(folder / "train.json") if (folder / "train.json").exists() else {}
        self.max_len = min(int(train.get("max_len", 128)), self.model.cfg.max_positions)
        self.encoder = Encoder.from_folder(folder)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from bigmodel_cli.data.vocab import PAD
        from bigmodel_cli.training.classify_data import Encoded, classify_probs

        cut = max(MAX_CHARS, 200 * self.max_len)
        docs = self.encoder.encode_texts([text[:cut] for text in texts], self.max_len)
        return classify_probs(self.model, Encoded.from_lists(docs, [-1] * len(docs)), self.batch_size,
                              self.encoder.vocab.id(PAD))

    def records(self, items: list[Item], top_k: int = 0) -> list[dict[str, Any]]:
        probs = self.probabilities([item.text for item in items])
        k = top_k or len(self.labels)
        out = []
        for item, p in zip(items, probs):
            order = np.argsort(-p, kind="stable")[:k]
            record: dict[str, Any] = {"text": item.text, "label": self.labels[order[0]], "score": round(float(p[order[0]]), 6),
                                      "probs": {self.labels[i]: round(float(p[i]), 6) for i in order}}
            if item.source is not None:
                record["source"] = item.source
            if item.gold is not None:
                record["gold"] = item.gold
            out.append(record)
        return out


def classifier_run(ws, run: str | None) -> Path:
    """runs/RUN (or the newest finetune run), which must be a classifier."""
    from bigmodel_cli.model.runs import find_run, run_kind

    folder = find_run(ws, run, kind=None if run not in (None, "latest") else "finetune")
    if run_kind(folder) != "finetune":
        raise UserError(f"run '{folder.name}' is a pretrain run (a language model), not a classifier, so it cannot predict labels",
                        hint=f"finetune it first (bigmodel finetune --from {folder.name}), then predict with --run classifier")
    return folder


# -- inputs --------------------------------------------------------------------------------------
def read_items(path: Path, fmt: str | None, text_field: str, label_field: str, encoding: str = "auto",
               on_progress=None, name: str | None = None) -> Iterator[Item]:
    """The documents of one file as preprocess reads it; a bad record is a one-line error."""
    from bigmodel_cli.data.readers import (
        TABLE_FORMATS,
        Reader,
        Reject,
        check_encoding,
        check_regular_file,
        detect_encoding,
        file_format,
        read_sample,
    )

    fmt = file_format(path, fmt)
    check_regular_file(path)
    if fmt in TABLE_FORMATS:
        enc = "utf-8"  # Parquet and Arrow strings are UTF-8: nothing to detect
    else:
        sample = read_sample(path)
        if not sample:
            raise InputError(path, "file is empty", hint="give a file with one text per line (txt) or records with a text field")
        enc = detect_encoding(path, sample) if encoding == "auto" else check_encoding(path, encoding)
    # A lone surrogate (a JSON escape with no partner) becomes U+FFFD: one odd character
    # need not stop a prediction run.
    reader = Reader(path, fmt, enc, text_field, label_field, name=name, surrogates="replace")
    try:
        for item in reader:
            if isinstance(item, Reject):
                if item.missing_label:  # a label is not needed to predict
                    continue
                raise InputError(item.source, item.reason, hint="fix the record, or pass --text-field for another field")
            if on_progress is not None:
                on_progress(reader.position())
            yield Item(item.text, item.source, item.label)
    finally:
        reader.close()


def spool_stdin(stream: IO[bytes], folder: Path, fmt: str) -> Path:
    """Standard input into a file, so that it is read like any other (encoding detected)."""
    path = folder / f"stdin.{fmt}"
    data = stream.read()
    if not data.strip():
        raise UserError("standard input is empty: nothing to predict", hint="pipe text in, one document per line: cat reviews.txt | bigmodel predict -")
    path.write_bytes(data)
    return path


# -- the stage ------------------------------------------------------------------------------------
@dataclass
class PredictSummary:
    run: str
    documents: int
    seconds: float
    docs_per_s: float


def predict(ws, texts: Iterable[str] = (), *, input_path: Path | None = None, run: str | None = None, top_k: int = 0,
            batch_size: int = 64, fmt: str | None = None, text_field: str | None = None, out: IO[str] | None = None,
            stdin: IO[bytes] | None = None, show_progress: bool = False, console=None) -> PredictSummary:
    """Classify TEXTs, or the documents of `input_path` ('-': standard input), writing JSONL to `out`."""
    from bigmodel_cli.data.readers import without_surrogates

    texts = [without_surrogates(t) for t in texts]  # arguments that were not UTF-8 hold them
    problems = []
    if top_k < 0:
        problems.append(f"--top-k must be 0 (every class) or more, got {top_k}")
    if batch_size < 1:
        problems.append(f"--batch-size must be a positive integer, got {batch_size}")
    if texts and input_path is not None:
        problems.append("give TEXT arguments or --input, not both")
    if problems:
        raise UserError("; ".join(problems))
    if not texts and input_path is None:
        raise UserError("nothing to predict: no TEXT, no --input", hint="bigmodel predict 'some text', --input FILE, or - to read standard input")
    empty = [i for i, t in enumerate(texts, 1) if not t.strip()]
    if empty:
        raise UserError(f"TEXT {empty[0]} is empty: nothing to predict", hint="give the text to classify, e.g. bigmodel predict '房间很干净'")
    out = out or sys.stdout
    folder = classifier_run(ws, run)
    predictor = Predictor(folder, batch_size)
    top_k = min(top_k, len(predictor.labels))
    started = time.perf_counter()
    count = 0
    if texts:
        for record in predictor.records([Item(t) for t in texts], top_k):
            out.write(json_line(record))
        count = len(texts)
    else:
        preprocess = ws.config().get("preprocess", {})
        text_field = text_field or preprocess.get("text_field", "text")
        label_field = preprocess.get("label_field", "label")
        with tempfile.TemporaryDirectory(prefix="bigmodel-predict-") as tmp:
            path, name = input_path, None
            if str(input_path) == "-":
                path, name = spool_stdin(stdin or sys.stdin.buffer, Path(tmp), fmt or "txt"), "stdin"
            count = _stream(predictor, path, fmt, text_field, label_field, top_k, out, show_progress, console, name)
            if count == 0:
                where = "standard input" if str(input_path) == "-" else str(input_path)
                raise UserError(f"{where} holds no text: nothing to predict",
                                hint="give one document per line (txt), or records with a text field (jsonl, csv, tsv)")
    out.flush()
    seconds = time.perf_counter() - started
    return PredictSummary(folder.name, count, round(seconds, 3), round(count / max(seconds, 1e-9), 1))


def _stream(predictor: Predictor, path: Path, fmt: str | None, text_field: str, label_field: str, top_k: int,
            out: IO[str], show_progress: bool, console, name: str | None = None) -> int:
    """Read, classify and write a file chunk by chunk, with a progress bar over its bytes."""
    count = 0
    with _Bar(show_progress, console, path) as bar:
        items = read_items(path, fmt, text_field, label_field, on_progress=bar.update, name=name)
        while True:
            chunk = list(itertools.islice(items, CHUNK))
            if not chunk:
                break
            for record in predictor.records(chunk, top_k):
                out.write(json_line(record))
            count += len(chunk)
            bar.docs(count)
    return count


class _Bar:
    def __init__(self, show: bool, console, path: Path):
        self.show, self.console, self.path = show, console, path
        self.progress = None
        self._seen = 0

    def __enter__(self) -> "_Bar":
        if self.show:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("[bold]predict"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                     TextColumn("{task.fields[docs]} docs"), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("predict", total=max(self.path.stat().st_size, 1), docs=0)
        return self

    def update(self, position: int) -> None:
        self._seen = position

    def docs(self, count: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self._seen, docs=f"{count:,}")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.progress.tasks[0].total)
            self.progress.stop()
