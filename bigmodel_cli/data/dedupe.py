"""The de-duplication index of preprocess: which clean texts were kept, in 16 bytes each.

Preprocess streams, so the one thing that must grow with the corpus is the memory of what
it has kept. Held as a Python dict of hash -> (label, source, split) that took about 240
bytes a document: a corpus ten times larger needed 1.8x the memory. Here each kept
document leaves a 64-bit hash of its text and one packed 64-bit integer (its document id,
label and split). The newest ones (65,536 in preprocess) sit in a dict; beyond that they
move into sorted numpy arrays, searched a batch of documents at a time. Those arrays are
segments of at most 2 x SEGMENT keys, each covering a range of hashes: a flush rebuilds
only the segments its keys fall in, so it never holds two copies of the whole index (one
pair of arrays grown with np.insert did, and made the peak memory of a corpus of 6 M
documents grow by twice the index).

The source of the copy kept is not stored: it is in the output, under the document id,
and is looked up there for the few label conflicts the report shows.
"""

from __future__ import annotations

from typing import Iterable

LABEL_BITS = 24  # up to 16 M distinct labels
SPLIT_BITS = 2
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2, None: 3}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


SEGMENT = 1 << 18  # keys per segment of the flushed index (16 MB with their values); at most twice that


class SeenIndex:
    """hash -> (document id, label id, split) for every document kept so far."""

    def __init__(self, flush_at: int = 1 << 16, segment: int | None = None):
        self.flush_at, self.segment = flush_at, segment or SEGMENT
        self.recent: dict[int, int] = {}
        self._segments: list = []  # (sorted int64 hashes, their packed values); the ranges ascend
        self._firsts = None  # each segment's first hash, to route a key to its segment

    def __len__(self) -> int:
        return len(self.recent) + sum(len(keys) for keys, _ in self._segments)

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
        one vectorised search per segment for the batch. Keys added since the last flush
        are in `recent`, which the caller checks as it goes."""
        if not self._segments or not keys:
            return [None] * len(keys)
        import numpy as np

        wanted = np.fromiter(keys, dtype=np.int64, count=len(keys))
        where = np.searchsorted(self._firsts, wanted, side="right") - 1  # -1: below every flushed key
        hit = np.zeros(len(keys), dtype=bool)
        values = np.zeros(len(keys), dtype=np.int64)
        for s in np.unique(where[where >= 0]).tolist():
            mask = where == s
            seg_keys, seg_values = self._segments[s]
            at = np.minimum(np.searchsorted(seg_keys, wanted[mask]), len(seg_keys) - 1)
            hit[mask] = seg_keys[at] == wanted[mask]
            values[mask] = seg_values[at]
        return [int(v) if h else None for h, v in zip(hit.tolist(), values.tolist())]

    def add(self, key: int, value: int) -> None:
        self.recent[key] = value

    def flush_if_full(self) -> None:
        """Move the recent keys into the sorted segments once there are flush_at of them.
        Called between batches, never inside one: a batch's search of the segments was
        made before its own documents were added."""
        if len(self.recent) >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        keys = np.fromiter(self.recent.keys(), dtype=np.int64, count=len(self.recent))
        values = np.fromiter(self.recent.values(), dtype=np.int64, count=len(self.recent))
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        self.recent = {}
        if not self._segments:
            self._segments = [(keys, values)]
        else:
            # Keys below the first segment's range go into the first segment.
            where = np.maximum(np.searchsorted(self._firsts, keys, side="right") - 1, 0)
            bounds = np.searchsorted(where, np.arange(len(self._segments) + 1))
            for s in range(len(self._segments)):
                lo, hi = int(bounds[s]), int(bounds[s + 1])
                if lo == hi:
                    continue
                seg_keys, seg_values = self._segments[s]
                at = np.searchsorted(seg_keys, keys[lo:hi])
                self._segments[s] = (np.insert(seg_keys, at, keys[lo:hi]), np.insert(seg_values, at, values[lo:hi]))
        self._split_large()
        self._firsts = np.array([seg_keys[0] for seg_keys, _ in self._segments], dtype=np.int64)

    def _split_large(self) -> None:
        out = []
        for seg_keys, seg_values in self._segments:
            while len(seg_keys) > 2 * self.segment:
                # Copies, so that the large arrays are freed rather than kept alive by views.
                out.append((seg_keys[:self.segment].copy(), seg_values[:self.segment].copy()))
                seg_keys, seg_values = seg_keys[self.segment:].copy(), seg_values[self.segment:].copy()
            out.append((seg_keys, seg_values))
        self._segments = out


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
