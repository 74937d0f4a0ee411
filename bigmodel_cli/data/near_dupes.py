"""Near-duplicate documents for preprocess --near-dupes: MinHash signatures and an LSH index.

A document's set of shingles is summarised by a MinHash signature (NUM_PERM minima of
seeded hash permutations); the share of equal minima between two signatures estimates
the Jaccard similarity of the two sets. datasketch's MinHashLSH finds, among the kept
documents, the few whose signatures share a band with a new one; those candidates are
then checked against the threshold on the full signature, so that a band collision
alone never drops a document.

Signatures are computed with numpy, a batch of documents at a time, by the formula of
datasketch's MinHash in its default scheme ("affine32": each shingle's 32-bit hash
mixed by MurmurHash3's finaliser, then a * h + b modulo 2^32 with a odd, the a and b
drawn from numpy's RandomState(SEED) as datasketch draws them). Its older "legacy"
formula takes a 64-bit modulo per value, far slower in numpy. The shingle hash is the
same in every run (Python's hash() of a string is salted per interpreter), so a corpus
gives the same signatures every time; preprocess computes them and takes the decisions
in its main process, in input order, so the number of workers changes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bigmodel_cli.errors import UserError

# Shingles are 5 consecutive characters of the clean text (white space, already one
# space between words, included). Characters, not words: Chinese has no spaces, and the
# words of the segmenter come later (in the workers) and would tie the result to
# --segmenter and the dictionaries; one rule also serves a document that mixes both.
# Five characters are two or three Chinese words or about one English word: specific
# enough that unrelated texts share few shingles (common particles and short words do
# not match on their own), short enough that one changed character alters only five of
# them. A text of fewer than five characters is one shingle.
SHINGLE = 5
NUM_PERM = 128
SEED = 1
# Thresholds datasketch's MinHashLSH can index with 128 permutations: above 0.95 it would
# have fewer than two bands; below 0.1 nearly every pair of documents is a candidate.
THRESHOLDS = (0.1, 0.95)
_MASK32 = np.uint64((1 << 32) - 1)
# Windows of one batch turned into NUM_PERM permuted hashes at a time: 16,384 x 128 x 4
# bytes = 8 MB per temporary array, whatever the length of the documents.
_WINDOWS_AT_ONCE = 16384


def require_datasketch() -> None:
    try:
        import datasketch  # noqa: F401
    except ImportError:
        raise UserError("--near-dupes needs the datasketch package, which is not installed",
                        hint="pip install 'datasketch>=1.6' (or pip install 'bigmodel-cli[corpus]')") from None


def _permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


_A, _B = _permutations()


def shingle_hashes(text: str) -> np.ndarray:
    """The 32-bit hash of each shingle of `text`, in order (repeats included: a minimum
    does not care)."""
    return _window_hashes(_codes(text))


def _codes(text: str) -> np.ndarray:
    if len(text) < SHINGLE:
        text += "\0" * (SHINGLE - len(text))  # cleaning removed control characters: \0 is never in a text
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def _window_hashes(codes: np.ndarray) -> np.ndarray:
    """A hash of every SHINGLE-character window: a polynomial in the code points (wrapping
    at 2^64), mixed by MurmurHash3's finaliser so that every bit depends on every character."""
    count = len(codes) - SHINGLE + 1
    h = codes[:count].copy()
    for j in range(1, SHINGLE):
        h *= np.uint64(0x100000001B3)
        h += codes[j:j + count]
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h & _MASK32).astype(np.uint32)


def signatures(texts: list[str]) -> np.ndarray:
    """The MinHash signature of each text: an array of len(texts) x NUM_PERM uint32."""
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    if not texts:
        return out
    padded = [t if len(t) >= SHINGLE else t + "\0" * (SHINGLE - len(t)) for t in texts]
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
    hashes = _window_hashes(_codes("".join(padded)))
    # Windows that cross from one text into the next are not shingles of either.
    ends = np.cumsum(lengths)
    keep = np.ones(len(hashes), dtype=bool)
    crossing = (ends[:-1, None] - np.arange(1, SHINGLE, dtype=np.int64)[None, :]).ravel()
    keep[crossing] = False
    hashes = hashes[keep]
    counts = lengths - SHINGLE + 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    doc = 0
    while doc < len(texts):
        # As many whole texts as fit in _WINDOWS_AT_ONCE windows (at least one), reduced together.
        last = max(doc + 1, int(np.searchsorted(starts, starts[doc] + _WINDOWS_AT_ONCE, side="right")))
        lo, hi = starts[doc], starts[last - 1] + counts[last - 1]
        if last == doc + 1:
            out[doc] = _min_permuted(hashes[lo:hi])
        else:
            # Permutations in rows: reduceat then runs along contiguous memory (5x faster than down columns).
            permuted = _permuted(hashes[lo:hi])
            out[doc:last] = np.minimum.reduceat(permuted, starts[doc:last] - lo, axis=1).T
        doc = last
    return out


def _premix(hashes: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before the permutations."""
    h = hashes ^ (hashes >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _permuted(hashes: np.ndarray) -> np.ndarray:
    """datasketch's permutations of each hash: (NUM_PERM, len(hashes)), wrapping at 2^32."""
    permuted = _A[:, None] * _premix(hashes)[None, :]
    permuted += _B[:, None]
    return permuted


def _min_permuted(hashes: np.ndarray) -> np.ndarray:
    """The minimum over `hashes` of each permutation, _WINDOWS_AT_ONCE at a time."""
    low = np.full(NUM_PERM, 0xFFFFFFFF, dtype=np.uint32)
    for at in range(0, len(hashes), _WINDOWS_AT_ONCE):
        np.minimum(low, _permuted(hashes[at:at + _WINDOWS_AT_ONCE]).min(axis=1), out=low)
    return low


class NearDuplicates:
    """The kept documents' signatures, and the earliest kept one that a new document matches.

    Memory: about 5 KB a kept document, nearly all of it the LSH index's buckets (datasketch
    keeps a set and a bytes key per band, nine bands at 0.8), held until the run ends.
    """

    def __init__(self, threshold: float):
        from datasketch import LeanMinHash, MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.kept: dict[int, tuple[np.ndarray, Any, Any]] = {}  # document id -> (signature, label, group)
        self._lean = LeanMinHash
        # datasketch 2 asks which formula made the hash values (1.x has no such argument).
        self._scheme = {"scheme": "affine32"} if _takes_scheme(LeanMinHash) else {}

    def find(self, signature: np.ndarray, group: Any = None) -> tuple[int, float, Any] | None:
        """(id, estimated similarity, label) of the earliest kept document of the same `group`
        whose signature agrees with `signature` on at least `threshold` of its values, else None."""
        best = None
        for doc_id in self.lsh.query(self._sketch(signature)):
            if best is not None and doc_id > best[0]:
                continue
            kept, label, kept_group = self.kept[doc_id]
            similarity = np.count_nonzero(kept == signature) / NUM_PERM
            if similarity >= self.threshold and kept_group == group:
                best = (doc_id, similarity, label)
        return best

    def add(self, doc_id: int, signature: np.ndarray, label: Any = None, group: Any = None) -> None:
        self.lsh.insert(doc_id, self._sketch(signature), check_duplication=False)
        self.kept[doc_id] = (signature, label, group)

    def _sketch(self, signature: np.ndarray):
        return self._lean(seed=SEED, hashvalues=signature, **self._scheme)


def _takes_scheme(cls) -> bool:
    import inspect

    return "scheme" in inspect.signature(cls.__init__).parameters
