"""GloVe (Pennington et al., 2014) in PyTorch on the CPU, trained the way the reference C tool does.

Objective: J = Σ f(X_ij) (w_i·w̃_j + b_i + b̃_j − log X_ij)², f(x) = min(1, (x/x_max)^α).

* Co-occurrence counts as `cooccur -symmetric 1` of stanfordnlp/GloVe: words a and b at distance
  d ≤ window add 1/d to X[a, b] and to X[b, a]; windows stop at document ends. Counted with numpy, one
  window offset at a time over chunks of tokens, each chunk turned into a sparse matrix (COO→CSR
  sums the duplicates) and added up: memory is bounded by the chunk, never by the corpus.
* AdaGrad as glove.c: weights and biases start uniform in (-0.5, 0.5)/dim, squared-gradient
  accumulators start at 1, a step is −(scaled gradient)/√accumulator, with
  fdiff = f(X)·(prediction − log X) per pair. Mirrored from glove.c (the version with `grad_clip_value`): each component of a
  word-vector gradient, fdiff·w̃, is clipped to ±100 and then scaled by lr; a bias steps by fdiff
  unscaled (glove.c: `W[bias] -= check_nan(fdiff / sqrt(gradsq[bias]))`, no eta) and accumulates
  fdiff² (ports of glove.c from before clipping came in scale the bias step by lr too; the
  current glove.c does not). Final vectors are W + W̃. tests/test_faults_embed.py checks a batch
  against a line-by-line port of glove.c's pair update.
* Batched, where glove.c goes pair by pair: pairs are shuffled every epoch (seeded) and taken up
  to BATCH_SIZE at a time (fewer on a small corpus). Within a batch each word's contributions are
  summed first, then the word takes one AdaGrad step; stepping once per pair from the same stale
  parameters diverges for frequent words, which appear in hundreds of pairs of a batch. For the
  same reason the summed gradient enters the accumulator before the step (torch.optim.Adagrad's
  order; glove.c steps first, which is stable only one pair at a time): no component moves by
  more than 1 in a step.
* Speed: a batch is a sparse matrix M (touched words × touched contexts). Predictions are M's
  sampled product of the touched rows (torch.sparse.sampled_addmm), the summed gradients are
  M(fdiff) @ W̃ and M(fdiff)ᵀ @ W (scipy SpMM), so no per-pair copy of a vector is ever made.
  Where clipping could change anything the batch goes the explicit way (per-pair gradients,
  clipped, summed with index_add_); the two agree (tests/test_glove.py).
* The loss of an epoch is Σ f·diff² / (2 · pairs), the number glove.c prints as "cost", each pair
  taken just before its batch's update, summed in float64.
* Deterministic for a seed with workers=1 (several threads may sum in another order).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from bigmodel_cli.errors import UserError

GRAD_CLIP = 100.0  # glove.c's grad_clip_value
BATCH_SIZE = 1 << 16  # pairs per step at most (bench_glove.py --batch-size measures others)
MIN_STEPS = 64  # a small corpus gets smaller batches, so that an epoch still takes this many steps
MIN_BATCH = 1024
COOC_CHUNK_TOKENS = 1 << 19  # tokens per co-occurrence chunk: about 16 bytes × window × this of scratch
SHUFFLE_BLOCK = 64  # pairs that stay together when an epoch reshuffles (see _Shuffler)
DIVERGENCE_FACTOR = 10.0  # a batch whose mean loss exceeds this × the first batch's has diverged
RISE_FACTOR = 2.0  # an epoch whose cost exceeds this × the lowest epoch cost so far has diverged
DEFAULT_LR = 0.05  # glove.c's eta

Progress = Optional[Callable[..., None]]


# ----------------------------------------------------------------------------------------------
# Co-occurrence counts


def cooccurrence_matrix(corpus: list[np.ndarray], vocab_size: int, window: int, *,
                        chunk_tokens: int = COOC_CHUNK_TOKENS, progress: Progress = None):
    """Symmetric X (scipy CSR, float64, vocab_size²) with X[a, b] = Σ 1/d over a and b d ≤ window apart."""
    import scipy.sparse as sp

    tokens, left = _flatten(corpus, vocab_size)
    total = len(tokens)
    upper = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    for start in range(0, total, chunk_tokens):
        stop = min(total, start + chunk_tokens)
        rows, cols, vals = [], [], []
        for d in range(1, window + 1):
            # Position t pairs with t + d when t + d is still inside t's document.
            t = np.flatnonzero(left[start:stop] > d)
            if not len(t):
                break  # no document in this chunk is longer than d
            t += start
            rows.append(tokens[t])
            cols.append(tokens[t + d])
            vals.append(np.full(len(t), 1.0 / d))
        if rows:
            chunk = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(vocab_size, vocab_size)).tocsr()  # tocsr sums duplicates
            upper = upper + chunk
        if progress is not None:
            progress("cooc", done=stop, total=total)
    # Each pair was counted once, (w[t], w[t+d]); the symmetric window adds the reverse. A word
    # paired with itself thus counts twice on the diagonal, as in the C tool.
    matrix = (upper + upper.T).tocsr()
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def _flatten(corpus: list[np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All tokens in one int32 array and, for each, how many tokens its document still has from it on."""
    lengths = np.fromiter((len(doc) for doc in corpus), dtype=np.int64, count=len(corpus))
    if not lengths.sum():
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    tokens = np.concatenate([np.asarray(doc).reshape(-1) for doc in corpus])
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"token ids must be integers, not {tokens.dtype}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}); found {low if low < 0 else high}")
    ends = np.cumsum(lengths)
    left = (np.repeat(ends, lengths) - np.arange(ends[-1])).astype(np.int32)
    return tokens.astype(np.int32), left


# ----------------------------------------------------------------------------------------------
# Parameters and one AdaGrad step


@dataclass
class GloveParams:
    """Word rows [w | b | 1] and context rows [w̃ | 1 | b̃], so one dot product of two rows is
    w·w̃ + b + b̃. Each table has its AdaGrad accumulators (the constant column never moves)."""

    words: "torch.Tensor"  # noqa: F821  (V, dim + 2) float32
    contexts: "torch.Tensor"  # noqa: F821
    words_sq: "torch.Tensor"  # noqa: F821
    contexts_sq: "torch.Tensor"  # noqa: F821

    @property
    def dim(self) -> int:
        return self.words.shape[1] - 2

    def vectors(self) -> np.ndarray:
        d = self.dim
        return (self.words[:, :d] + self.contexts[:, :d]).numpy().astype(np.float32, copy=True)


def init_params(vocab_size: int, dim: int, seed: int) -> GloveParams:
    """Uniform (-0.5, 0.5)/dim for vectors and biases, accumulators at 1 (glove.c's start)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    words = (torch.rand(vocab_size, dim + 2, generator=gen, dtype=torch.float64) - 0.5) / dim
    contexts = (torch.rand(vocab_size, dim + 2, generator=gen, dtype=torch.float64) - 0.5) / dim
    words[:, dim + 1] = 1.0
    contexts[:, dim] = 1.0
    ones = torch.ones(vocab_size, dim + 2, dtype=torch.float32)
    return GloveParams(words.float(), contexts.float(), ones, ones.clone())


def step_scales(dim: int, lr: float) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
    """Per-column learning rates: lr for vector components, 1 for the bias (as glove.c), 0 for the constant."""
    import torch

    words = torch.full((dim + 2,), lr, dtype=torch.float32)
    words[dim], words[dim + 1] = 1.0, 0.0
    contexts = words.clone()
    contexts[dim], contexts[dim + 1] = 0.0, 1.0
    return words, contexts


def train_batch(params: GloveParams, i, j, log_x, weight, scales, *, clip: float = GRAD_CLIP) -> float:
    """One batch: returns Σ f(X)·diff² over it (the objective J before the update) and updates in place.

    i, j: int64 tensors of word and context ids, each (i, j) at most once (sorted by (i, j) saves a
    sort); log_x, weight: float32 log X_ij and f(X_ij).

    The batch is a sparse matrix M (touched words × touched contexts). The predictions are its
    sampled product with the touched rows (SDDMM), and each word's summed gradient
    Σ_j fdiff_ij·w̃_j is M(fdiff) @ W̃ (SpMM): no per-pair rows are ever materialised. glove.c clips
    every component of fdiff·w̃ to ±clip; when the batch's largest |fdiff| times its largest
    parameter could reach clip, the batch takes the explicit per-pair path, which clips and sums
    with index_add_. Both give the same step.
    """
    import torch

    key = i * params.contexts.shape[0] + j
    if len(key) > 1 and not bool((key[1:] >= key[:-1]).all()):  # the CSR layout needs (i, j) order
        order = torch.argsort(key)
        i, j, log_x, weight = i[order], j[order], log_x[order], weight[order]
    word_ids, where_i, per_word = torch.unique_consecutive(i, return_inverse=True, return_counts=True)
    context_ids, where_j = _unique_sorted(j, params.contexts.shape[0])
    words = params.words.index_select(0, word_ids)
    contexts = params.contexts.index_select(0, context_ids)
    crow = torch.zeros(len(word_ids) + 1, dtype=torch.int64)
    torch.cumsum(per_word, 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, where_j, torch.zeros(len(i)), size=(len(word_ids), len(context_ids)),
                                          check_invariants=False)
    diff = torch.sparse.sampled_addmm(pattern, words, contexts.t(), beta=0.0).values() - log_x
    fdiff = weight * diff
    loss = float(torch.dot(fdiff.double(), diff.double()))
    bound = _abs_max(fdiff) * max(_abs_max(words[:, :-2]), _abs_max(contexts[:, :-2]))
    if bound < clip:
        import scipy.sparse as sp

        m = sp.csr_matrix((fdiff.numpy(), where_j.numpy(), crow.numpy()), shape=(len(word_ids), len(context_ids)))
        grad_words = torch.from_numpy(m @ contexts.numpy())
        grad_contexts = torch.from_numpy(m.T @ words.numpy())
    else:
        grad_words = _clipped_sum(contexts, where_j, where_i, fdiff, len(word_ids), clip)
        grad_contexts = _clipped_sum(words, where_i, where_j, fdiff, len(context_ids), clip)
    _adagrad(params.words, params.words_sq, word_ids, words, grad_words, scales[0])
    _adagrad(params.contexts, params.contexts_sq, context_ids, contexts, grad_contexts, scales[1])
    return loss


def _abs_max(t) -> float:
    import torch

    low, high = torch.aminmax(t)
    return max(-float(low), float(high))


def _unique_sorted(ids, size: int):
    """Sorted distinct ids and each id's position among them (a counting pass, cheaper than a sort)."""
    import torch

    present = torch.bincount(ids, minlength=size) > 0
    position = torch.cumsum(present, 0) - 1
    return present.nonzero().squeeze(1), position.index_select(0, ids)


def _clipped_sum(other_rows, other_where, own_where, fdiff, n_rows: int, clip: float):
    """Σ over each row's pairs of clip(fdiff·other row) (vector components only, as glove.c), via index_add_."""
    import torch

    grads = other_rows.index_select(0, other_where).mul_(fdiff.unsqueeze(1))
    dim = other_rows.shape[1] - 2
    grads[:, :dim].clamp_(-clip, clip)
    return torch.zeros(n_rows, other_rows.shape[1], dtype=grads.dtype).index_add_(0, own_where, grads)


def _adagrad(table, squares, rows, current, summed, scale) -> None:
    """One AdaGrad step for each touched row (`current` holds their values) with its summed gradient:
    accumulate, then step."""
    summed.mul_(scale)
    sq = squares.index_select(0, rows).addcmul_(summed, summed)
    squares.index_copy_(0, rows, sq)
    table.index_copy_(0, rows, current.sub_(summed.div_(sq.sqrt_())))


# ----------------------------------------------------------------------------------------------
# Training


def train_glove(corpus: list[np.ndarray], vocab_size: int, *, dim: int = 100, window: int = 15, epochs: int = 15,
                x_max: float = 100.0, alpha: float = 0.75, lr: float = DEFAULT_LR, seed: int = 42, workers: int = 0,
                progress: Progress = None) -> tuple[np.ndarray, list[float], dict]:
    """Train GloVe on `corpus` (one int array of token ids per document) and return
    (vectors W + W̃ as float32 [vocab_size, dim], loss per epoch, stats).

    Raises UserError for a bad setting, a corpus without a single co-occurring pair, or as soon as
    the loss or a parameter turns NaN/inf, the loss runs away, the first batch leaves every word
    vector where it was (lr × gradient overflows float32, or lr is too small to change a float32),
    or an epoch's cost is over RISE_FACTOR × the lowest so far.
    """
    import torch

    _check_settings(vocab_size, dim, window, epochs, x_max, alpha, lr, workers)
    threads = workers or os.cpu_count() or 1
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        matrix = cooccurrence_matrix(corpus, vocab_size, window, progress=progress)
        cooc_seconds = time.perf_counter() - started
        n_tokens = int(sum(len(doc) for doc in corpus))
        stats = {"tokens": n_tokens, "vocab_size": vocab_size, "threads": threads,
                 "cooccurrence_seconds": cooc_seconds,
                 "cooccurrence_tokens_per_s": n_tokens / cooc_seconds if cooc_seconds > 0 else float("inf"),
                 "nonzero_pairs": int(matrix.nnz)}
        if matrix.nnz == 0:
            raise UserError("the corpus has no word pairs to learn from: no document has two tokens in the vocabulary",
                            hint="give it more text, or lower --min-count")
        vectors, losses, train_stats = _train(matrix, dim, epochs, x_max, alpha, lr, seed, progress)
        stats.update(train_stats)
        return vectors, losses, stats
    finally:
        torch.set_num_threads(previous_threads)


def _check_settings(vocab_size, dim, window, epochs, x_max, alpha, lr, workers) -> None:
    problems = []
    for name, value in (("--dim", dim), ("--window", window), ("--epochs", epochs)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            problems.append(f"{name} must be a positive integer, not {value!r}")
    for name, value in (("--x-max", x_max), ("alpha", alpha), ("--lr", lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            problems.append(f"{name} must be a positive number, not {value!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 0:
        problems.append(f"--workers must be 0 (all cores) or a positive integer, not {workers!r}")
    if vocab_size < 1:
        problems.append("the vocabulary is empty")
    if problems:
        raise UserError("; ".join(problems))


def _train(matrix, dim, epochs, x_max, alpha, lr, seed, progress) -> tuple[np.ndarray, list[float], dict]:
    import torch

    coo = matrix.tocoo()  # row-major: sorting pair numbers sorts pairs by (word, context)
    rows = torch.from_numpy(coo.row.astype(np.int64))
    cols = torch.from_numpy(coo.col.astype(np.int64))
    log_x = torch.from_numpy(np.log(coo.data).astype(np.float32))
    weight = torch.from_numpy(np.minimum(1.0, (coo.data / x_max) ** alpha).astype(np.float32))
    n_pairs = len(coo.data)
    del coo

    params = init_params(matrix.shape[0], dim, seed)
    scales = step_scales(dim, lr)
    shuffler = _Shuffler(n_pairs, np.random.default_rng(seed))
    batch_size = batch_size_for(n_pairs)
    losses, seconds = [], []
    first_batch_mean = None
    start_vectors = params.words[:, :dim].clone()  # compared after the first batch: did anything move?
    train_started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        total = 0.0
        with torch.inference_mode():
            for number, batch in enumerate(shuffler.epoch(batch_size), 1):
                idx = torch.from_numpy(batch)
                batch_loss = train_batch(params, rows[idx], cols[idx], log_x[idx], weight[idx], scales)
                mean = batch_loss / (2 * len(batch))
                if first_batch_mean is None:
                    first_batch_mean = max(mean, 1e-12)
                if not math.isfinite(batch_loss) or mean > DIVERGENCE_FACTOR * first_batch_mean:
                    _diverged(epoch, number, batch_loss, lr, x_max)
                if start_vectors is not None:
                    _check_first_step(params, start_vectors, lr)
                    start_vectors = None
                total += batch_loss
            if not all(bool(torch.isfinite(t).all()) for t in (params.words, params.contexts, params.words_sq, params.contexts_sq)):
                _diverged(epoch, None, float("nan"), lr, x_max)
        seconds.append(time.perf_counter() - began)
        losses.append(total / (2 * n_pairs))
        if losses[-1] > RISE_FACTOR * min(losses):
            _rose(epoch, min(losses), losses[-1], lr)
        if progress is not None:
            progress("epoch", epoch=epoch, epochs=epochs, loss=losses[-1], pairs_per_s=n_pairs / seconds[-1])
    stats = {"seconds_per_epoch": seconds, "training_seconds": time.perf_counter() - train_started, "batch_size": batch_size}
    return params.vectors(), losses, stats


def batch_size_for(n_pairs: int) -> int:
    """BATCH_SIZE, or less for a small corpus: at least MIN_STEPS steps per epoch, at least MIN_BATCH pairs each."""
    return int(min(BATCH_SIZE, max(MIN_BATCH, n_pairs // MIN_STEPS)))


class _Shuffler:
    """Pair numbers in a fresh random order each epoch, a batch at a time, each batch sorted.

    One full permutation is drawn at the start (as the C tool's `shuffle` does once); every epoch
    then permutes blocks of SHUFFLE_BLOCK consecutive entries of it, so each batch is a new random
    sample of the pairs. A full permutation every epoch costs about 1 s per 13 M pairs, a seventh
    of an epoch (random memory access over all pairs); moving blocks of 64 reads memory in order.
    """

    def __init__(self, n: int, rng: np.random.Generator):
        self.rng = rng
        padded = -(-n // SHUFFLE_BLOCK) * SHUFFLE_BLOCK
        order = np.full(padded, -1, dtype=np.int64)
        order[:n] = rng.permutation(n)
        self.blocks = order.reshape(-1, SHUFFLE_BLOCK)
        self.padded = padded != n

    def epoch(self, batch_size: int):
        per_batch = max(1, batch_size // SHUFFLE_BLOCK)
        blocks = self.rng.permutation(len(self.blocks))
        for start in range(0, len(blocks), per_batch):
            batch = self.blocks[blocks[start:start + per_batch]].reshape(-1)
            if self.padded:
                batch = batch[batch >= 0]
            batch.sort()
            yield batch


def _check_first_step(params: GloveParams, start_vectors, lr: float) -> None:
    """Stop at once when the first batch left every word vector where it was: lr × gradient
    overflowed float32 (the AdaGrad sum of squares became inf, so every step is 0), or lr is too
    small to change a float32 value. Only the biases (which step without lr) would learn."""
    import torch

    dim = params.dim
    if bool(torch.isinf(params.words_sq[:, :dim]).any()) or bool(torch.isinf(params.contexts_sq[:, :dim]).any()):
        raise UserError(f"GloVe's word vectors cannot learn with --lr {lr:g}: the learning rate times the gradient "
                        f"overflows float32 (AdaGrad's sum of squares became inf at epoch 1, batch 1)",
                        hint=f"lower --lr (the default is {DEFAULT_LR:g})")
    if torch.equal(params.words[:, :dim], start_vectors):
        raise UserError(f"GloVe's word vectors did not move in the first batch: --lr {lr:g} is too small to change "
                        f"a float32 value", hint=f"raise --lr (the default is {DEFAULT_LR:g})")


def _rose(epoch: int, lowest: float, loss: float, lr: float) -> None:
    raise UserError(f"GloVe training diverged at epoch {epoch}: the cost rose to {loss:.6g}, over {RISE_FACTOR:g}x its "
                    f"lowest value so far ({lowest:.6g})", hint=f"lower --lr (now {lr:g}; the default is {DEFAULT_LR:g})")


def _diverged(epoch: int, batch: int | None, loss: float, lr: float, x_max: float) -> None:
    where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
    what = "became NaN/inf" if not math.isfinite(loss) else f"ran away (over {DIVERGENCE_FACTOR:g}x its value at the start)"
    raise UserError(f"GloVe training diverged at {where}: the loss {what}",
                    hint=f"lower --lr (now {lr:g}) or raise --x-max (now {x_max:g})")
