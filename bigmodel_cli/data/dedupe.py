"""The de-duplication index of preprocess: which clean texts were kept, in 16 bytes each.

Preprocess streams, so the one thing that must grow with the corpus is the memory of what
it has kept. Held as a Python dict of hash -> (label, source, split) that took about 240
bytes a document: a corpus ten times larger needed 1.8x the memory. Here each kept
document leaves a 64-bit hash of its text and one packed 64-bit integer (its document id,
label and split). The newest ones (65,536 in preprocess) sit in a dict; beyond that they
move into two sorted numpy arrays, searched a batch of documents at a time.

The source of the copy kept is not stored: it is in the output, under the document id,
and is looked up there for the few label conflicts the report shows.
"""

from __future__ import annotations

from typing import Iterable

LABEL_BITS = 24  # up to 16 M distinct labels
SPLIT_BITS = 2
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2, None: 3}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


class SeenIndex:
    """hash -> (document id, label id, split) for every document kept so far."""

    def __init__(self, flush_at: int = 1 << 16):
        self.flush_at = flush_at
        self.recent: dict[int, int] = {}
        self._keys = None  # sorted int64 hashes, and their packed values
        self._values = None

    def __len__(self) -> int:
        return len(self.recent) + (0 if self._keys is None else len(self._keys))

    @staticmethod
    def pack(doc_id: int, label_id: int, split: str | None) -> int:
        return (doc_id << (LABEL_BITS + SPLIT_BITS)) | (SPLIT_CODES[split] << LABEL_BITS) | label_id

    @staticmethod
    def unpack(value: int) -> tuple[int, int, str | None]:
        """(document id, label id, split)."""
        return (value >> (LABEL_BITS + SPLIT_BITS), value & ((1 << LABEL_BITS) - 1),
                SPLIT_NAMES[(value >> LABEL_BITS) & ((1 << SPLIT_BITS) - 1)])

    def find_flushed(self, keys: list[int]) -> list[int | None]:
        """The packed value of each key among the older documents (None where absent);
        one vectorised search for the batch. Keys added since the last flush are in
        `recent`, which the caller checks as it goes."""
        if self._keys is None or not keys:
            return [None] * len(keys)
        import numpy as np

        wanted = np.fromiter(keys, dtype=np.int64, count=len(keys))
        at = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        hit = self._keys[at] == wanted
        values = self._values[at]
        return [int(v) if h else None for h, v in zip(hit.tolist(), values.tolist())]

    def add(self, key: int, value: int) -> None:
        self.recent[key] = value

    def flush_if_full(self) -> None:
        """Move the recent keys into the sorted arrays once there are flush_at of them.
        Called between batches, never inside one: a batch's search of the arrays was
        made before its own documents were added."""
        if len(self.recent) >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        keys = np.fromiter(self.recent.keys(), dtype=np.int64, count=len(self.recent))
        values = np.fromiter(self.recent.values(), dtype=np.int64, count=len(self.recent))
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        if self._keys is None:
            self._keys, self._values = keys, values
        else:  # a merge: one pass over the old arrays, not a sort of everything
            at = np.searchsorted(self._keys, keys)
            self._keys = np.insert(self._keys, at, keys)
            self._values = np.insert(self._values, at, values)
        self.recent = {}


def kept_sources(paths: Iterable, doc_ids: set[int]) -> dict[int, str]:
    """The "source" of the given documents, read back from the split files written."""
    from bigmodel_cli.data.store import read_records

    found: dict[int, str] = {}
    for path in paths:
        if len(found) == len(doc_ids):
            break
        # Only the ids are decoded for every record; the sources only where wanted.
        rows = {n: r["id"] for n, r in enumerate(read_records(path, columns=["id"])) if r["id"] in doc_ids}
        for n, r in enumerate(read_records(path, columns=["source"]) if rows else ()):
            if n in rows:
                found[rows[n]] = r["source"]
                if len(found) == len(doc_ids):
                    break
    return found
