"""GloVe: co-occurrence counts, the objective, the AdaGrad step and training, against plain references.

Everything runs on tiny data (a random corpus of a few hundred tokens, gensim's Lee corpus of 60k
tokens) with one thread, so the module takes seconds.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from bigmodel_cli.embeddings import glove
from bigmodel_cli.errors import UserError

# ----------------------------------------------------------------------------------------------
# helpers


def random_corpus(rng: np.random.Generator, vocab_size: int, n_docs: int, max_len: int) -> list[np.ndarray]:
    """Documents of 0..max_len tokens, skewed towards small ids so that pairs repeat."""
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(0, max_len + 1))
        docs.append(np.minimum(rng.geometric(0.15, size=n) - 1, vocab_size - 1).astype(np.int64))
    return docs


def naive_cooccurrence(corpus, vocab_size: int, window: int) -> np.ndarray:
    x = np.zeros((vocab_size, vocab_size))
    for doc in corpus:
        for t in range(len(doc)):
            for u in range(t + 1, min(len(doc), t + window + 1)):
                x[doc[t], doc[u]] += 1.0 / (u - t)
                x[doc[u], doc[t]] += 1.0 / (u - t)
    return x


def split_params(params: glove.GloveParams):
    """(w, b, w̃, b̃) and their accumulators as float64 numpy arrays, in the paper's terms."""
    d = params.dim
    w, c = params.words.double().numpy(), params.contexts.double().numpy()
    ws, cs = params.words_sq.double().numpy(), params.contexts_sq.double().numpy()
    return {"w": w[:, :d].copy(), "b": w[:, d].copy(), "wt": c[:, :d].copy(), "bt": c[:, d + 1].copy(),
            "w_sq": ws[:, :d].copy(), "b_sq": ws[:, d].copy(), "wt_sq": cs[:, :d].copy(), "bt_sq": cs[:, d + 1].copy()}


def objective(p, i, j, x, x_max, alpha) -> float:
    """J = Σ f(X_ij)(w_i·w̃_j + b_i + b̃_j − log X_ij)²."""
    f = np.minimum(1.0, (x / x_max) ** alpha)
    pred = (p["w"][i] * p["wt"][j]).sum(1) + p["b"][i] + p["bt"][j]
    return float((f * (pred - np.log(x)) ** 2).sum())


def numpy_step(p, i, j, x, x_max, alpha, lr, clip):
    """The batched AdaGrad step written out: per-pair gradients (vector components clipped as
    glove.c), summed per word, accumulator += (scaled sum)², then −scaled sum/√accumulator.
    Vectors step with lr, biases with 1 (glove.c's bias step has no lr)."""
    p = {k: v.copy() for k, v in p.items()}
    f = np.minimum(1.0, (x / x_max) ** alpha)
    fdiff = f * ((p["w"][i] * p["wt"][j]).sum(1) + p["b"][i] + p["bt"][j] - np.log(x))
    grads = {"w": np.clip(fdiff[:, None] * p["wt"][j], -clip, clip), "wt": np.clip(fdiff[:, None] * p["w"][i], -clip, clip),
             "b": fdiff, "bt": fdiff}
    for name, ids, rate in (("w", i, lr), ("wt", j, lr), ("b", i, 1.0), ("bt", j, 1.0)):
        summed = np.zeros_like(p[name])
        np.add.at(summed, ids, grads[name])
        summed *= rate
        rows = np.unique(ids)
        p[name + "_sq"][rows] += summed[rows] ** 2
        p[name][rows] -= summed[rows] / np.sqrt(p[name + "_sq"][rows])
    return p


def batch_of(vocab_size: int, n_pairs: int, seed: int):
    """Distinct (i, j) pairs sorted by (i, j), with counts spread over the two sides of x_max."""
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(vocab_size * vocab_size, size=n_pairs, replace=False))
    i, j = keys // vocab_size, keys % vocab_size
    x = rng.choice([0.2, 0.5, 1.0, 2.5, 7.0, 30.0, 150.0], size=n_pairs) * rng.uniform(0.5, 1.5, size=n_pairs)
    return i, j, x


def to_torch_batch(i, j, x, x_max, alpha):
    return (torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(np.log(x)).float(),
            torch.from_numpy(np.minimum(1.0, (x / x_max) ** alpha)).float())


@pytest.fixture(scope="module")
def lee():
    """gensim's Lee corpus: lower-cased whitespace tokens, ids by frequency, words seen 3+ times."""
    from bigmodel_cli.data.samples import gensim_lee_corpus

    docs = [line.lower().split() for line in gensim_lee_corpus().read_text(encoding="utf-8").splitlines()]
    counts = Counter(w for doc in docs for w in doc)
    words = sorted((w for w, n in counts.items() if n >= 3), key=lambda w: (-counts[w], w))
    index = {w: n for n, w in enumerate(words)}
    corpus = [np.array([index[w] for w in doc if w in index], dtype=np.int64) for doc in docs]
    return corpus, words, index


@pytest.fixture(scope="module")
def lee_run(lee):
    corpus, words, _ = lee
    return glove.train_glove(corpus, len(words), dim=30, window=8, epochs=12, x_max=10.0, seed=3, workers=1)


# ----------------------------------------------------------------------------------------------
# co-occurrence


@pytest.mark.parametrize("window,chunk", [(1, 7), (3, 1 << 19), (5, 13), (40, 50)])
def test_cooccurrence_equals_naive_double_loop(window, chunk):
    rng = np.random.default_rng(window)
    corpus = random_corpus(rng, vocab_size=12, n_docs=25, max_len=30)
    x = glove.cooccurrence_matrix(corpus, 12, window, chunk_tokens=chunk)
    np.testing.assert_allclose(x.toarray(), naive_cooccurrence(corpus, 12, window), rtol=1e-12, atol=1e-12)
    assert (x != x.T).nnz == 0


def test_cooccurrence_stops_at_document_ends():
    # "0 1" and "2 3": joined they would pair 1 with 2; as two documents they must not.
    x = glove.cooccurrence_matrix([np.array([0, 1]), np.array([2, 3])], 4, window=5).toarray()
    assert x[1, 2] == x[2, 1] == 0
    assert x[0, 1] == x[1, 0] == 1.0 and x[2, 3] == 1.0


def test_cooccurrence_weights_by_inverse_distance_and_counts_self_pairs_twice():
    x = glove.cooccurrence_matrix([np.array([0, 1, 0])], 2, window=2).toarray()
    assert x[0, 1] == x[1, 0] == 2.0  # two neighbours at distance 1
    assert x[0, 0] == 1.0  # 0 … 0 at distance 2: 1/2 each way, as the C tool's symmetric count


def test_cooccurrence_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        glove.cooccurrence_matrix([np.array([0, 3])], 3, window=2)


# ----------------------------------------------------------------------------------------------
# objective and AdaGrad step


def test_batch_loss_is_the_objective_on_the_same_parameters():
    vocab, dim, x_max, alpha = 30, 6, 10.0, 0.75
    params = glove.init_params(vocab, dim, seed=1)
    params.words[:, :dim + 1] *= 40  # larger than the initial values, so every term counts
    params.contexts[:, :dim] *= 40
    params.contexts[:, dim + 1] *= 40
    i, j, x = batch_of(vocab, 200, seed=2)
    expected = objective(split_params(params), i, j, x, x_max, alpha)
    got = glove.train_batch(params, *to_torch_batch(i, j, x, x_max, alpha), glove.step_scales(dim, 0.05))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("clip", [glove.GRAD_CLIP, 0.02])
def test_adagrad_step_equals_numpy_with_summed_word_gradients(clip):
    """clip=0.02 clips most components, which sends the batch down the explicit index_add_ path."""
    vocab, dim, x_max, alpha, lr = 25, 5, 10.0, 0.75, 0.05
    params = glove.init_params(vocab, dim, seed=4)
    params.words[:, :dim] *= 50
    params.contexts[:, :dim] *= 50
    i, j, x = batch_of(vocab, 180, seed=5)  # 180 pairs over 25 words: every word repeats
    before = split_params(params)
    expected = numpy_step(before, i, j, x, x_max, alpha, lr, clip)
    glove.train_batch(params, *to_torch_batch(i, j, x, x_max, alpha), glove.step_scales(dim, lr), clip=clip)
    after = split_params(params)
    for name in expected:
        np.testing.assert_allclose(after[name], expected[name], rtol=2e-4, atol=2e-6, err_msg=name)
    assert not np.allclose(after["w"], before["w"])
    # the constant columns that carry the biases through the dot product never move
    assert torch.all(params.words[:, dim + 1] == 1) and torch.all(params.contexts[:, dim] == 1)


def test_batch_order_does_not_matter():
    vocab, dim = 20, 4
    i, j, x = batch_of(vocab, 120, seed=6)
    shuffled = np.random.default_rng(0).permutation(len(i))
    results = []
    for order in (np.arange(len(i)), shuffled):
        params = glove.init_params(vocab, dim, seed=1)
        loss = glove.train_batch(params, *to_torch_batch(i[order], j[order], x[order], 10.0, 0.75), glove.step_scales(dim, 0.05))
        results.append((loss, params.words.clone(), params.contexts.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2])


def test_init_params_as_glove_c():
    params = glove.init_params(500, 20, seed=0)
    p = split_params(params)
    for name in ("w", "b", "wt", "bt"):
        assert np.abs(p[name]).max() < 0.5 / 20
        assert np.abs(p[name]).max() > 0.4 / 20  # spread over the whole interval
    for name in ("w_sq", "b_sq", "wt_sq", "bt_sq"):
        assert np.all(p[name] == 1.0)


# ----------------------------------------------------------------------------------------------
# training


def test_loss_decreases_on_real_text(lee_run):
    _, losses, _ = lee_run
    assert len(losses) == 12
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.6 * losses[0]


def test_frequent_related_words_are_closer_than_random_pairs(lee, lee_run):
    _, words, index = lee
    vectors, _, _ = lee_run
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    related = [("prime", "minister"), ("united", "states"), ("per", "cent"), ("new", "york"),
               ("security", "council"), ("south", "africa"), ("al", "qaeda"), ("west", "bank")]
    related = [(a, b) for a, b in related if a in index and b in index]
    assert len(related) >= 6
    related_cos = np.mean([unit[index[a]] @ unit[index[b]] for a, b in related])
    rng = np.random.default_rng(0)
    frequent = rng.choice(300, size=(400, 2))
    random_cos = np.mean([unit[a] @ unit[b] for a, b in frequent if a != b])
    assert related_cos > random_cos + 0.2, (related_cos, random_cos)


def test_result_shapes_and_stats(lee, lee_run):
    corpus, words, _ = lee
    vectors, losses, stats = lee_run
    assert vectors.shape == (len(words), 30) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert all(isinstance(x, float) for x in losses)
    for key in ("cooccurrence_seconds", "cooccurrence_tokens_per_s", "nonzero_pairs", "seconds_per_epoch", "training_seconds"):
        assert key in stats
    assert len(stats["seconds_per_epoch"]) == 12
    assert stats["nonzero_pairs"] == glove.cooccurrence_matrix(corpus, len(words), 8).nnz
    assert stats["tokens"] == sum(len(d) for d in corpus)


def test_same_seed_same_vectors_other_seed_other_vectors():
    corpus = random_corpus(np.random.default_rng(7), vocab_size=40, n_docs=60, max_len=40)
    run = lambda seed: glove.train_glove(corpus, 40, dim=8, window=4, epochs=3, seed=seed, workers=1)  # noqa: E731
    a, loss_a, _ = run(11)
    b, loss_b, _ = run(11)
    c, _, _ = run(12)
    assert np.array_equal(a, b) and loss_a == loss_b
    assert not np.allclose(a, c)


def test_progress_events_and_threads_restored():
    corpus = random_corpus(np.random.default_rng(8), vocab_size=30, n_docs=20, max_len=20)
    events = []
    threads = torch.get_num_threads()
    glove.train_glove(corpus, 30, dim=4, window=3, epochs=2, workers=1, progress=lambda e, **kw: events.append((e, kw)))
    assert torch.get_num_threads() == threads
    cooc = [kw for e, kw in events if e == "cooc"]
    assert cooc[-1]["done"] == cooc[-1]["total"] == sum(len(d) for d in corpus)
    epochs = [kw for e, kw in events if e == "epoch"]
    assert [kw["epoch"] for kw in epochs] == [1, 2] and all(kw["epochs"] == 2 for kw in epochs)
    assert all(kw["loss"] > 0 and kw["pairs_per_s"] > 0 for kw in epochs)


# ----------------------------------------------------------------------------------------------
# bad settings and divergence


def test_huge_learning_rate_stops_at_once_with_what_to_change(lee):
    corpus, words, _ = lee
    import time

    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        glove.train_glove(corpus, len(words), dim=30, window=8, epochs=50, lr=1e6, x_max=10.0, workers=1)
    message = str(caught.value)
    assert "diverged" in message and "epoch 1," in message and "lower --lr" in message and "--x-max" in message
    assert "\n" not in message
    assert time.perf_counter() - started < 20


def test_nan_parameters_are_caught(monkeypatch):
    corpus = random_corpus(np.random.default_rng(9), vocab_size=20, n_docs=30, max_len=30)
    real_init = glove.init_params

    def poisoned(*args, **kwargs):
        params = real_init(*args, **kwargs)
        params.words[0, 0] = float("nan")  # word 0 is the most frequent: the first batch meets it
        return params

    monkeypatch.setattr(glove, "init_params", poisoned)
    with pytest.raises(UserError, match=r"epoch 1, batch 1: the loss became NaN/inf; lower --lr"):
        glove.train_glove(corpus, 20, dim=4, window=3, epochs=2, workers=1)


@pytest.mark.parametrize("options,flag", [({"dim": 0}, "--dim"), ({"window": -1}, "--window"), ({"epochs": 1.5}, "--epochs"),
                                          ({"lr": 0.0}, "--lr"), ({"x_max": -5.0}, "--x-max"), ({"workers": -1}, "--workers")])
def test_bad_settings_are_user_errors(options, flag):
    with pytest.raises(UserError, match=flag):
        glove.train_glove([np.array([0, 1, 2])], 3, **options)


def test_corpus_without_pairs_is_a_user_error():
    with pytest.raises(UserError, match="no word pairs"):
        glove.train_glove([np.array([0]), np.array([], dtype=np.int64), np.array([1])], 2, dim=4, workers=1)
    with pytest.raises(UserError, match="no word pairs"):
        glove.train_glove([], 2, dim=4, workers=1)
