"""Classification data: labelled documents read from data/processed, encoded as [CLS] tokens
[SEP] ids, batched by length, and the model's class probabilities over them. Shared by
finetune, evaluate, predict, explain and the baseline."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bigmodel_cli.data.store import read_records
from bigmodel_cli.data.vocab import CLS, SEP, Vocab
from bigmodel_cli.errors import InputError
from bigmodel_cli.fileio import read_json


# -- data -----------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Documents as one flat array of ids with offsets (document i is ids[offsets[i]:offsets[i+1]]),
    and their label indices (-1: a label the model does not know)."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, docs: list[list[int]], labels: list[int]) -> "Encoded":
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(d) for d in docs])
        flat = np.fromiter((i for d in docs for i in d), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(labels, dtype=np.int64))


def encode_ids(vocab: Vocab, tokens: list[str], max_len: int) -> list[int]:
    """[CLS] tokens [SEP], cut to max_len (the same as TextPipeline.encode)."""
    ids = [vocab.id(CLS)] + vocab.encode(tokens) + [vocab.id(SEP)]
    if len(ids) > max_len:
        ids = ids[: max_len - 1] + [vocab.id(SEP)]
    return ids


def read_split(path: Path) -> list[dict[str, Any]]:
    """The records of a processed split: tokens, label (None when absent), text and lang."""
    records = []
    for number, record in enumerate(read_records(path), 1):
        tokens = record.get("tokens")
        if not isinstance(tokens, list):
            raise InputError(path, "not a processed record with a 'tokens' list", line=number,
                             hint="run `bigmodel preprocess --force` to rebuild it")
        label = record.get("label")
        records.append({"tokens": tokens, "label": None if label is None else str(label),
                        "text": record.get("text") or "", "lang": record.get("lang") or ""})
    return records


def encode_records(records: list[dict[str, Any]], encoder, labels: list[str], max_len: int) -> Encoded:
    """Labelled records through the run's Encoder (data.tokenizer), as predict encodes raw text."""
    index = {label: i for i, label in enumerate(labels)}
    return Encoded.from_lists(encoder.encode_records(records, max_len), [index.get(r["label"], -1) for r in records])


def pad_batch(docs: list[np.ndarray], pad_id: int, length: int | None = None):
    """(ids, attention_mask) tensors of the documents, right-padded to `length` (default: the longest)."""
    import torch

    length = length or max(len(d) for d in docs)
    ids = np.full((len(docs), length), pad_id, dtype=np.int64)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)] = doc
    ids = torch.from_numpy(ids)
    return ids, ids != pad_id


def classify_probs(model, data: Encoded, batch_size: int, pad_id: int, autocast: Callable | None = None,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Class probabilities (n, num_labels) of every document, in batches of similar length."""
    import torch

    device = next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext
    order = np.argsort(data.lengths, kind="stable")
    out = np.zeros((len(data), model.cfg.num_labels), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            picked = order[start:start + batch_size]
            ids, mask = pad_batch([data.doc(i) for i in picked], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with autocast():
                hidden, _ = model.encode(ids, attention_mask=mask)
                logits = model.classify(hidden, mask)
            out[picked] = logits.float().softmax(-1).cpu().numpy()
            if on_batch is not None:
                on_batch(len(picked))
    return out


def classifier_max_len(folder: Path, model) -> int:
    """The tokens a classifier reads ([CLS] and [SEP] included): finetune's max_len from the
    run's train.json, within the position table. predict reads train.json the same way."""
    train_cfg = read_json(folder / "train.json") if (folder / "train.json").exists() else {}
    return min(int(train_cfg.get("max_len", 128)), model.cfg.max_positions)
