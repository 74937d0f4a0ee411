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
ENCODE_CHUNK = 2048  # records encoded at a time (tokenizers encodes a batch on all cores)


def encode_blocks(path: Path, encoder, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, starts), both (n, seq_len): documents + [SEP], concatenated, cut into
    [CLS] + seq_len-1 ids; `starts` is 1 where a token begins a word (see
    Encoder.record_pieces), for whole-word masking."""
    from array import array

    body = seq_len - 1
    vocab = encoder.vocab
    sep = vocab.id(SEP)
    stream, starts = array("i"), array("b")
    for chunk in _record_chunks(path):
        for ids, word_starts in encoder.record_pieces(chunk):
            stream.extend(ids)
            starts.extend(word_starts)
            stream.append(sep)
            starts.append(1)
    n = math.ceil(len(stream) / body) if stream else 0
    out = np.full((n, seq_len), vocab.id(PAD), dtype=np.int32)
    out_starts = np.ones((n, seq_len), dtype=np.uint8)
    out[:, 0] = vocab.id(CLS)
    if n:
        padded = np.full(n * body, vocab.id(PAD), dtype=np.int32)
        padded[: len(stream)] = np.frombuffer(stream, dtype=np.int32)
        out[:, 1:] = padded.reshape(n, body)
        padded_starts = np.ones(n * body, dtype=np.uint8)
        padded_starts[: len(starts)] = np.frombuffer(starts, dtype=np.int8)
        out_starts[:, 1:] = padded_starts.reshape(n, body)
    return out, out_starts


def _record_chunks(path: Path):
    chunk: list[dict] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record["tokens"], list) or not isinstance(record.get("text", ""), str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise InputError(path, "not a processed record with a 'tokens' list", line=number,
                                 hint="run `bigmodel preprocess --force` to rebuild it") from None
            chunk.append(record)
            if len(chunk) == ENCODE_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def cached_blocks(path: Path, encoder, seq_len: int, cache_dir: Path, writer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Encoded blocks and their word starts, computed once per (file, encoder, seq_len) and memory-mapped."""
    stat = path.stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{encoder.fingerprint}:{seq_len}".encode()).hexdigest()[:16]
    cache = cache_dir / f"{path.stem}-{seq_len}-{key}.npy"
    starts_cache = cache_dir / f"{path.stem}-{seq_len}-{key}.starts.npy"
    if writer and not (cache.exists() and starts_cache.exists()):
        blocks, starts = encode_blocks(path, encoder, seq_len)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob(f"{path.stem}-*.npy"):
            old.unlink()
        with atomic_write(starts_cache, "wb") as handle:
            np.save(handle, starts)
        with atomic_write(cache, "wb") as handle:
            np.save(handle, blocks)
    return np.load(cache, mmap_mode="r", allow_pickle=False), np.load(starts_cache, mmap_mode="r", allow_pickle=False)


class LMTask:
    """Language-model batches over packed blocks; see train.Task."""

    monitor = "loss"
    higher_is_better = False

    def __init__(self, train: np.ndarray, dev: np.ndarray | None, batch_size: int, seed: int, vocab: Vocab,
                 mask_prob: float = 0.15, eval_batches: int = 20, starts: tuple[np.ndarray | None, np.ndarray | None] | None = None):
        """`starts`: (train, dev) word starts of the blocks (encode_blocks), for whole-word
        masking; None masks token by token."""
        self.train, self.dev, self.batch_size, self.seed = train, dev, batch_size, seed
        self.train_starts, self.dev_starts = starts or (None, None)
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
        starts = None if self.train_starts is None else torch.from_numpy(np.asarray(self.train_starts[picked], dtype=np.bool_))
        return self.prepare(ids, [self.seed, epoch, index], rows, starts)

    def prepare(self, ids, key: list[int], rows: slice = slice(None), starts=None):

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
            part = slice(start, min(n, start + self.batch_size))
            ids = torch.from_numpy(np.asarray(self.dev[part], dtype=np.int64))
            starts = None if self.dev_starts is None else torch.from_numpy(np.asarray(self.dev_starts[part], dtype=np.bool_))
            yield self.prepare(ids, [self.seed, 1 << 30, i], starts=starts)

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
    def prepare(self, ids, key: list[int], rows: slice = slice(None), starts=None):
        """BERT's masking, drawn for the whole global batch from a generator seeded by the
        step and then cut to `rows`: the same masks for any number of processes or parts.
        With `starts` (whole-word masking, as Chinese BERT-wwm), every token of a word takes
        the draws of the word's first token, so a word is masked, kept or replaced whole;
        each token is still chosen with probability mask_prob."""
        import torch

        g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        shape = (self.batch_size, ids.shape[1])
        pick, how, random_ids = (torch.rand(shape, generator=g), torch.rand(shape, generator=g),
                                 torch.randint(self.first_word, max(self.vocab_size, self.first_word + 1), shape, generator=g))
        pick, how, random_ids = pick[rows][: len(ids)], how[rows][: len(ids)], random_ids[rows][: len(ids)]
        if starts is not None:
            positions = torch.arange(ids.shape[1]).expand_as(ids)
            first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
            pick, how = pick.gather(1, first), how.gather(1, first)
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
