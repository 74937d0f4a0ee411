"""Language-model data and tasks: the processed corpus as fixed-length blocks of token ids
(cached, memory-mapped), and the masked (MLM) and causal (CLM) objectives that the training
loop runs on them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from bigmodel_cli.data.store import read_records
from bigmodel_cli.data.vocab import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, Vocab
from bigmodel_cli.errors import InputError
from bigmodel_cli.fileio import atomic_write


# -- data -----------------------------------------------------------------------------------
ENCODE_CHUNK = 2048  # records encoded at a time (tokenizers encodes a batch on all cores)


class TokenBlocks:
    """The corpus as one flat stream of token ids (each document followed by [SEP]), cut on
    the fly into blocks of [CLS] + seq_len-1 ids, the last one padded. `blocks[rows]` gives
    (len(rows), seq_len) int32 ids; `blocks.starts[rows]` the matching word starts (1 where a
    token begins a word, see Encoder.record_pieces), for whole-word masking.

    The stream is stored flat (uint16 where the vocabulary fits, else uint32) and memory-
    mapped, so that a corpus of any size costs the pages a batch touches, and one file
    serves every --seq-len."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray, seq_len: int, cls_id: int, pad_id: int):
        self.ids, self.word_starts, self.seq_len, self.cls_id, self.pad_id = ids, starts, seq_len, cls_id, pad_id
        self.body = seq_len - 1
        self.starts = _StartsView(self)

    def __len__(self) -> int:
        return -(-len(self.ids) // self.body) if len(self.ids) else 0

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def _gather(self, flat: np.ndarray, rows, fill: int, first: int, dtype) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        positions = rows[:, None] * self.body + np.arange(self.body)
        inside = positions < len(flat)
        out = np.empty((len(rows), self.seq_len), dtype=dtype)
        out[:, 0] = first
        body = np.asarray(flat[np.minimum(positions, max(len(flat) - 1, 0))], dtype=dtype) if len(flat) else \
            np.full(positions.shape, fill, dtype=dtype)
        out[:, 1:] = np.where(inside, body, fill)
        return out

    def __getitem__(self, rows) -> np.ndarray:
        return self._gather(self.ids, rows, self.pad_id, self.cls_id, np.int32)


class _StartsView:
    def __init__(self, blocks: TokenBlocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, rows) -> np.ndarray:
        return self.blocks._gather(self.blocks.word_starts, rows, 1, 1, np.uint8)


def id_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def write_stream(path: Path, encoder, ids_out, starts_out) -> int:
    """Encode a processed split record by record (ENCODE_CHUNK at a time) into two binary
    files: the ids (id_dtype) and the word starts (uint8). Returns the number of tokens."""
    dtype = id_dtype(len(encoder.vocab))
    sep = encoder.vocab.id(SEP)
    count = 0
    for chunk in _record_chunks(path):
        ids, starts = [], []
        for piece_ids, word_starts in encoder.record_pieces(chunk):
            ids += piece_ids
            ids.append(sep)
            starts += word_starts
            starts.append(1)
        ids_out.write(np.asarray(ids, dtype=dtype).tobytes())
        starts_out.write(np.asarray(starts, dtype=np.uint8).tobytes())
        count += len(ids)
    return count


def encode_blocks(path: Path, encoder, seq_len: int) -> TokenBlocks:
    """The blocks of a split, encoded in memory (a dev or test split for evaluate)."""
    import io

    ids, starts = io.BytesIO(), io.BytesIO()
    write_stream(path, encoder, ids, starts)
    vocab = encoder.vocab
    return TokenBlocks(np.frombuffer(ids.getvalue(), dtype=id_dtype(len(vocab))),
                       np.frombuffer(starts.getvalue(), dtype=np.uint8), seq_len, vocab.id(CLS), vocab.id(PAD))


def _intact(done_path: Path, ids_path: Path, starts_path: Path, dtype) -> bool:
    """Whether an encoding is complete and its files have the sizes its record says (a file
    cut short or edited by hand is encoded again rather than read as garbage)."""
    try:
        tokens = int(json.loads(done_path.read_text(encoding="utf-8"))["tokens"])
        return (ids_path.stat().st_size == tokens * np.dtype(dtype).itemsize
                and starts_path.stat().st_size == tokens)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_outdated(cache_dir: Path, stem: str, source: str) -> None:
    """Drop the encodings of an earlier version of the split (other encoders' of this one stay)."""
    for done in cache_dir.glob(f"{stem}-*.json"):
        try:
            current = json.loads(done.read_text(encoding="utf-8")).get("source_stat") == source
        except (OSError, ValueError, AttributeError):
            current = False
        if not current:
            for suffix in (".ids.bin", ".starts.bin", ".json"):
                done.with_name(done.name[: -len(".json")] + suffix).unlink(missing_ok=True)


def _record_chunks(path: Path):
    chunk: list[dict] = []
    for number, record in enumerate(read_records(path, columns=["text", "tokens"]), 1):
        if record["text"] is None:
            record["text"] = ""
        if not isinstance(record["tokens"], list) or not isinstance(record["text"], str):
            raise InputError(path, "not a processed record with a 'tokens' list", line=number,
                             hint="run `bigmodel preprocess --force` to rebuild it")
        chunk.append(record)
        if len(chunk) == ENCODE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cached_blocks(path: Path, encoder, seq_len: int, cache_dir: Path, writer: bool) -> TokenBlocks:
    """The blocks of a processed split, encoded once per (file, encoder) into `cache_dir`
    (the workspace's .bigmodel/cache/ids/; written streaming, so memory stays flat whatever
    the corpus size) and memory-mapped: every run on that dataset with that tokenizer starts
    from the same file. `writer`: this process may encode (rank 0); the others map it."""
    stat = path.stat()
    source = f"{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(f"{source}:{encoder.fingerprint}".encode()).hexdigest()[:16]
    split = f"{path.parent.name}-{path.stem}"  # dataset and split: processed-train, corpus-dev
    stem = cache_dir / f"{split}-{key}"
    ids_path, starts_path, done_path = (stem.with_name(stem.name + suffix) for suffix in (".ids.bin", ".starts.bin", ".json"))
    dtype = id_dtype(len(encoder.vocab))
    if writer and not _intact(done_path, ids_path, starts_path, dtype):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_outdated(cache_dir, split, source)
        with atomic_write(ids_path, "wb") as ids_out, atomic_write(starts_path, "wb") as starts_out:
            count = write_stream(path, encoder, ids_out, starts_out)
        with atomic_write(done_path) as handle:  # written last: the files before it are complete
            json.dump({"tokens": count, "dtype": np.dtype(dtype).name, "source": path.name, "source_stat": source,
                       "encoder": encoder.fingerprint}, handle)
    vocab = encoder.vocab
    ids = np.memmap(ids_path, dtype=dtype, mode="r") if ids_path.stat().st_size else np.zeros(0, dtype=dtype)
    starts = np.memmap(starts_path, dtype=np.uint8, mode="r") if starts_path.stat().st_size else np.zeros(0, np.uint8)
    return TokenBlocks(ids, starts, seq_len, vocab.id(CLS), vocab.id(PAD))


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
        # A Hugging Face vocabulary (continued pretraining) keeps [UNK] [CLS] [SEP] [MASK] further
        # on (Google's at 100-103): they are never masked either, as in BERT.
        self.late_specials = sorted(i for i in (vocab.id(t) for t in SPECIAL_TOKENS) if i >= self.first_word)
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
        if self.late_specials:
            chosen &= ~torch.isin(ids, torch.tensor(self.late_specials, dtype=ids.dtype))
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
