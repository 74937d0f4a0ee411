"""Language-model data and tasks: the processed corpus as fixed-length blocks of token ids
(cached, memory-mapped), and the masked (MLM) and causal (CLM) objectives that the training
loop runs on them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from bigmodel_cli.data.vocab import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, Vocab
from bigmodel_cli.errors import InputError
from bigmodel_cli.fileio import atomic_write


# -- data -----------------------------------------------------------------------------------
def encode_blocks(path: Path, vocab: Vocab, seq_len: int) -> np.ndarray:
    """(blocks, seq_len) int32: documents + [SEP], concatenated, cut into [CLS] + seq_len-1."""
    body = seq_len - 1
    stream: list[int] = []
    sep = vocab.id(SEP)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                tokens = json.loads(line)["tokens"]
            except (ValueError, KeyError, TypeError):
                raise InputError(path, "not a processed record with a 'tokens' list", line=number,
                                 hint="run `bigmodel preprocess --force` to rebuild it") from None
            stream.extend(vocab.encode(tokens))
            stream.append(sep)
    n = math.ceil(len(stream) / body) if stream else 0
    out = np.full((n, seq_len), vocab.id(PAD), dtype=np.int32)
    out[:, 0] = vocab.id(CLS)
    if n:
        flat = np.asarray(stream, dtype=np.int32)
        padded = np.full(n * body, vocab.id(PAD), dtype=np.int32)
        padded[: len(flat)] = flat
        out[:, 1:] = padded.reshape(n, body)
    return out


def cached_blocks(path: Path, vocab: Vocab, seq_len: int, cache_dir: Path, writer: bool) -> np.ndarray:
    """Encoded blocks, computed once per (file, vocab, seq_len) and memory-mapped."""
    key = hashlib.sha256(f"{path.stat().st_size}:{path.stat().st_mtime_ns}:{len(vocab)}:{seq_len}:{vocab.tokens[-1]}".encode()).hexdigest()[:16]
    cache = cache_dir / f"{path.stem}-{seq_len}-{key}.npy"
    if writer and not cache.exists():
        blocks = encode_blocks(path, vocab, seq_len)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob(f"{path.stem}-*.npy"):
            old.unlink()
        with atomic_write(cache, "wb") as handle:
            np.save(handle, blocks)
    return np.load(cache, mmap_mode="r", allow_pickle=False)


class LMTask:
    """Language-model batches over packed blocks; see train.Task."""

    monitor = "loss"
    higher_is_better = False

    def __init__(self, train: np.ndarray, dev: np.ndarray | None, batch_size: int, seed: int, vocab: Vocab,
                 mask_prob: float = 0.15, eval_batches: int = 20):
        self.train, self.dev, self.batch_size, self.seed = train, dev, batch_size, seed
        self.vocab_size, self.mask_prob, self.eval_batches = len(vocab), mask_prob, eval_batches
        self.pad, self.mask_id = vocab.id(PAD), vocab.id(MASK)
        self.first_word = len(SPECIAL_TOKENS)  # ids below this are special and never masked
        self.steps_per_epoch = len(train) // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.train)))
        return self._order[1]

    def batch(self, epoch: int, index: int, rows: slice):
        import torch

        picked = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size][rows]
        ids = torch.from_numpy(np.asarray(self.train[picked], dtype=np.int64))
        return self.prepare(ids, [self.seed, epoch, index], rows)

    def prepare(self, ids, key: list[int], rows: slice = slice(None)):

        batch = {"ids": ids}
        if bool((ids == self.pad).any()):
            batch["attention_mask"] = ids != self.pad
        return batch

    def count(self, batch) -> int:
        return int((batch["ids"][:, 1:] != self.pad).sum())

    def tokens(self, batch) -> int:
        return int((batch["ids"] != self.pad).sum())

    def dev_batches(self):
        import torch

        if self.dev is None or not len(self.dev):
            return
        n = len(self.dev) if not self.eval_batches else min(len(self.dev), self.eval_batches * self.batch_size)
        for i, start in enumerate(range(0, n, self.batch_size)):
            ids = torch.from_numpy(np.asarray(self.dev[start:min(n, start + self.batch_size)], dtype=np.int64))
            yield self.prepare(ids, [self.seed, 1 << 30, i])

    def evaluate(self, model, autocast) -> dict[str, float]:
        device = next(model.parameters()).device
        total = terms = correct = 0.0
        for batch in self.dev_batches():
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                loss, n, right = type(self).loss(model, batch)
            total, terms, correct = total + float(loss), terms + float(n), correct + float(right)
        if not terms:
            return {}
        mean = total / terms
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "accuracy": correct / terms}


class MLMTask(LMTask):
    def prepare(self, ids, key: list[int], rows: slice = slice(None)):
        """BERT's masking, drawn for the whole global batch from a generator seeded by the
        step and then cut to `rows`: the same masks for any number of processes or parts."""
        import torch

        g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        shape = (self.batch_size, ids.shape[1])
        pick, how, random_ids = (torch.rand(shape, generator=g), torch.rand(shape, generator=g),
                                 torch.randint(self.first_word, max(self.vocab_size, self.first_word + 1), shape, generator=g))
        pick, how, random_ids = pick[rows][: len(ids)], how[rows][: len(ids)], random_ids[rows][: len(ids)]
        chosen = (pick < self.mask_prob) & (ids >= self.first_word)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = ids.clone()
        inputs[chosen & (how < 0.8)] = self.mask_id
        swap = chosen & (how >= 0.8) & (how < 0.9)
        inputs[swap] = random_ids[swap]
        batch = {"ids": inputs, "labels": labels}
        if bool((ids == self.pad).any()):
            batch["attention_mask"] = ids != self.pad
        return batch

    def count(self, batch) -> int:
        return int((batch["labels"] != -100).sum())

    @staticmethod
    def loss(model, batch):
        hidden, _ = model.encode(batch["ids"], attention_mask=batch.get("attention_mask"))
        return model.mlm_loss(hidden, batch["labels"])


class CLMTask(LMTask):
    @staticmethod
    def loss(model, batch):
        hidden, _ = model.encode(batch["ids"], attention_mask=batch.get("attention_mask"), causal=True)
        return model.clm_loss(hidden, batch["ids"])
