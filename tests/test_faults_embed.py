"""`bigmodel embed` under faults (issue #17): GloVe's update against a line-by-line port of
glove.c, learning rates that cannot train, fastText's n-gram matrix stored once, staging
folders of killed runs, and SIGKILL followed by a rerun.

The corpora are tiny (gensim's Lee corpus, cut down, or a few hundred random token ids).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import assert_fails, dead_pid, lee_docs, write_processed

from bigmodel_cli.embeddings import glove
from bigmodel_cli.errors import UserError
from bigmodel_cli.workspace.layout import Workspace

gensim = pytest.importorskip("gensim")
from gensim.models import KeyedVectors  # noqa: E402

SMALL = ["--dim", "8", "--epochs", "1", "--min-count", "2", "-j", "1"]


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def lee_ws(ws) -> Workspace:
    write_processed(ws, lee_docs(80))
    return ws


def hidden(ws: Workspace) -> list[str]:
    folder = ws.root / "embeddings"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


# ----------------------------------------------------------------------------------------------
# 1. GloVe's update against glove.c
#
# A port of glove_thread() in stanfordnlp/GloVe src/glove.c (the version with grad_clip_value,
# unchanged since 2019): one pair at a time, W and gradsq laid out as there (word rows, then
# context rows, each dim values and a bias), `real` is double. The bias steps by fdiff without
# eta: glove.c's `fdiff *= eta` was removed when clipping came in (commit 5b4e03c).


def glove_c_pass(W, gradsq, pairs, vocab: int, dim: int, eta: float, x_max: float, alpha: float,
                 clip: float = glove.GRAD_CLIP, accumulate_first: bool = False) -> float:
    """One pass over `pairs` ((word, context, X) with 0-based ids) in order; returns Σ 0.5·f·diff².
    accumulate_first=True adds each squared gradient to gradsq before the step instead of after
    (bigmodel's documented order; the only line that differs)."""
    cost = 0.0
    for w1, w2, val in pairs:
        l1 = w1 * (dim + 1)
        l2 = (w2 + vocab) * (dim + 1)
        diff = float(np.dot(W[l1:l1 + dim], W[l2:l2 + dim])) + W[dim + l1] + W[dim + l2] - math.log(val)
        fdiff = diff if val > x_max else (val / x_max) ** alpha * diff
        if not (math.isfinite(diff) and math.isfinite(fdiff)):
            continue
        cost += 0.5 * fdiff * diff
        temp1 = np.clip(fdiff * W[l2:l2 + dim], -clip, clip) * eta
        temp2 = np.clip(fdiff * W[l1:l1 + dim], -clip, clip) * eta
        if accumulate_first:
            gradsq[l1:l1 + dim] += temp1 * temp1
            gradsq[l2:l2 + dim] += temp2 * temp2
            gradsq[dim + l1] += fdiff * fdiff
            gradsq[dim + l2] += fdiff * fdiff
        up1 = temp1 / np.sqrt(gradsq[l1:l1 + dim])
        up2 = temp2 / np.sqrt(gradsq[l2:l2 + dim])
        if not accumulate_first:
            gradsq[l1:l1 + dim] += temp1 * temp1
            gradsq[l2:l2 + dim] += temp2 * temp2
        if np.isfinite(up1.sum()) and np.isfinite(up2.sum()):
            W[l1:l1 + dim] -= up1
            W[l2:l2 + dim] -= up2
        W[dim + l1] -= fdiff / math.sqrt(gradsq[dim + l1])
        W[dim + l2] -= fdiff / math.sqrt(gradsq[dim + l2])
        if not accumulate_first:
            gradsq[dim + l1] += fdiff * fdiff
            gradsq[dim + l2] += fdiff * fdiff
    return cost


def to_glove_c(params: glove.GloveParams) -> tuple[np.ndarray, np.ndarray]:
    """bigmodel's [w | b | 1] and [w̃ | 1 | b̃] rows (and accumulators) in glove.c's layout."""
    d, v = params.dim, params.words.shape[0]
    out = []
    for words, contexts in ((params.words, params.contexts), (params.words_sq, params.contexts_sq)):
        flat = np.zeros((2 * v, d + 1))
        flat[:v, :d], flat[:v, d] = words[:, :d].double().numpy(), words[:, d].double().numpy()
        flat[v:, :d], flat[v:, d] = contexts[:, :d].double().numpy(), contexts[:, d + 1].double().numpy()
        out.append(flat.reshape(-1))
    return out[0], out[1]


def disjoint_batch(vocab: int, seed: int):
    """Pairs in which every word and every context occurs once: glove.c's sequential pass and a
    batch then see the same parameters for every pair, so the two can be compared exactly.
    Counts on both sides of x_max = 10."""
    rng = np.random.default_rng(seed)
    i, j = np.arange(vocab), rng.permutation(vocab)
    x = rng.choice([0.2, 0.5, 1.0, 2.5, 7.0, 30.0, 150.0], size=vocab) * rng.uniform(0.5, 1.5, size=vocab)
    return i, j, x


@pytest.mark.parametrize("lr,clip,scale", [(0.05, glove.GRAD_CLIP, 1.0), (0.5, glove.GRAD_CLIP, 30.0), (0.05, 0.02, 30.0)])
def test_batch_step_is_glove_c_pair_update(lr, clip, scale):
    """The cost, the weighting f = min(1, (x/x_max)^0.75), the clipping, eta on the vectors only
    and the accumulators starting at 1 are glove.c's, to float32 precision. The step divides by
    the accumulator after this gradient is added (glove.c: before it); that is the one line in
    which the oracle is told to differ."""
    vocab, dim, x_max, alpha = 40, 6, 10.0, 0.75
    params = glove.init_params(vocab, dim, seed=3)
    params.words[:, :dim + 1] *= scale  # larger vectors: the loss is far from 0 and clip=0.02 clips
    params.contexts[:, :dim] *= scale
    params.contexts[:, dim + 1] *= scale
    W, G = to_glove_c(params)
    assert np.all(G == 1.0)
    i, j, x = disjoint_batch(vocab, seed=4)
    pairs = list(zip(i.tolist(), j.tolist(), x.tolist()))
    strict_W, strict_G = W.copy(), G.copy()
    strict_cost = glove_c_pass(strict_W, strict_G, pairs, vocab, dim, lr, x_max, alpha, clip)
    ours_W, ours_G = W.copy(), G.copy()
    glove_c_pass(ours_W, ours_G, pairs, vocab, dim, lr, x_max, alpha, clip, accumulate_first=True)

    batch = (torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(np.log(x)).float(),
             torch.from_numpy(np.minimum(1.0, (x / x_max) ** alpha)).float())
    loss = glove.train_batch(params, *batch, glove.step_scales(dim, lr), clip=clip)
    got_W, got_G = to_glove_c(params)
    assert loss / 2 == pytest.approx(strict_cost, rel=1e-5)  # glove.c's cost, before the update
    np.testing.assert_allclose(got_G, strict_G, rtol=1e-5)  # the accumulators do not depend on the order
    np.testing.assert_allclose(got_W, ours_W, rtol=1e-4, atol=1e-6)
    moved = np.abs(got_W - W).reshape(2 * vocab, dim + 1)
    assert moved[:, :dim].max() > 1e-4 and moved[:, dim].max() > 1e-4  # vectors and biases both learnt


def test_bias_step_does_not_scale_with_the_learning_rate():
    """glove.c steps a bias by fdiff/√gradsq whatever eta is; the vectors' step scales with eta."""
    vocab, dim = 30, 4
    i, j, x = disjoint_batch(vocab, seed=5)
    batch = (torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(np.log(x)).float(),
             torch.from_numpy(np.minimum(1.0, x / 10.0) ** 0.75).float())
    steps = {}
    for lr in (0.01, 0.1):
        params = glove.init_params(vocab, dim, seed=1)
        before = params.words.clone()
        glove.train_batch(params, *batch, glove.step_scales(dim, lr))
        steps[lr] = (params.words - before).abs()
    torch.testing.assert_close(steps[0.01][:, dim], steps[0.1][:, dim])
    assert steps[0.1][:, :dim].sum() > 5 * steps[0.01][:, :dim].sum()


def test_training_cost_within_one_percent_of_glove_c_on_a_tiny_corpus():
    """15 epochs on 2,335 pairs: glove.c's port goes pair by pair in a new random order each epoch;
    bigmodel goes in batches. The final cost may not be worse than glove.c's by more than 1%."""
    rng = np.random.default_rng(7)
    vocab, dim, window, epochs, x_max = 60, 10, 5, 15, 10.0
    corpus = [np.minimum(rng.geometric(0.1, size=int(rng.integers(5, 60))) - 1, vocab - 1) for _ in range(300)]
    coo = glove.cooccurrence_matrix(corpus, vocab, window).tocoo()
    pairs = list(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()))
    W, G = to_glove_c(glove.init_params(vocab, dim, seed=1))
    order = np.random.default_rng(0)
    for _ in range(epochs):
        order.shuffle(pairs)
        c_cost = glove_c_pass(W, G, pairs, vocab, dim, glove.DEFAULT_LR, x_max, 0.75) / len(pairs)
    _, losses, _ = glove.train_glove(corpus, vocab, dim=dim, window=window, epochs=epochs, x_max=x_max, seed=1, workers=1)
    assert losses[-1] <= 1.01 * c_cost, (losses[-1], c_cost)


# ----------------------------------------------------------------------------------------------
# 2. learning rates that cannot train


def random_corpus(seed: int = 7, vocab: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.minimum(rng.geometric(0.15, size=40) - 1, vocab - 1) for _ in range(60)]


@pytest.mark.parametrize("lr,words", [(1e30, ["--lr 1e+30", "overflows float32", "lower --lr", "0.05"]),
                                      (1e20, ["--lr 1e+20", "overflows float32"]),
                                      (1e-30, ["did not move", "--lr 1e-30", "raise --lr"])])
def test_learning_rate_that_leaves_the_vectors_untrained_fails_at_the_first_batch(lr, words, monkeypatch):
    """With lr=1e30, lr × gradient squared is inf: every vector step is 0 and only the biases
    learn; the cost still falls, so nothing else would notice."""
    batches = []
    real = glove.train_batch
    monkeypatch.setattr(glove, "train_batch", lambda *a, **k: batches.append(1) or real(*a, **k))
    with pytest.raises(UserError) as caught:
        glove.train_glove(random_corpus(), 40, dim=8, window=4, epochs=3, seed=1, workers=1, lr=lr)
    line = caught.value.one_line()
    assert all(w in line for w in words), line
    assert "\n" not in line and len(batches) == 1


@pytest.mark.parametrize("lr", [1e10, 1000.0])
def test_cost_that_rises_over_epochs_is_divergence(lr):
    with pytest.raises(UserError, match=r"diverged at epoch \d: the cost rose to .*; lower --lr"):
        glove.train_glove(random_corpus(), 40, dim=8, window=4, epochs=6, seed=1, workers=1, lr=lr)


def test_default_learning_rate_still_trains():
    _, losses, _ = glove.train_glove(random_corpus(), 40, dim=8, window=4, epochs=6, seed=1, workers=1)
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_cli_glove_lr_1e30_exits_2_and_writes_nothing(lee_ws, run_cli, helpers):
    assert run_cli(["embed", "--method", "glove", *SMALL, "--window", "3"], lee_ws.root).exit_code == 0
    before = helpers.snapshot(lee_ws.root / "embeddings")
    result = run_cli(["embed", "--method", "glove", *SMALL, "--window", "3", "--lr", "1e30"], lee_ws.root)
    assert_fails(result, "--lr 1e+30", "lower --lr")
    assert helpers.snapshot(lee_ws.root / "embeddings") == before and hidden(lee_ws) == []
    records = lee_ws.records("embed:glove")
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert lee_ws.last_record("embed:glove")["params"]["lr"] == 0.05


# ----------------------------------------------------------------------------------------------
# 3. fastText: the n-gram matrix once, its size set by --buckets


def test_fasttext_ngram_matrix_is_stored_once(lee_ws, run_cli):
    from safetensors import safe_open

    from bigmodel_cli.embeddings.vectors import load_vectors

    buckets, dim = 100_000, 8
    result = run_cli(["embed", "--method", "fasttext", *SMALL, "--buckets", str(buckets), "--min-n", "2", "--max-n", "4"],
                     lee_ws.root)
    assert result.exit_code == 0, result.output
    folder = lee_ws.root / "embeddings" / "fasttext"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    ngram_bytes = buckets * dim * 4
    with safe_open(str(folder / "vectors.safetensors"), "np") as tensors:
        assert tensors.get_slice("vectors_ngrams").get_shape() == [buckets, dim]
    assert ngram_bytes <= sizes["vectors.safetensors"] < ngram_bytes * 1.2
    others = sum(size for name, size in sizes.items() if name != "vectors.safetensors")
    assert others < ngram_bytes / 4, sizes  # no other file holds a copy of the n-grams
    kv = KeyedVectors.load(str(folder / "vectors.kv"))  # gensim's file: the words' vectors
    full = load_vectors(folder)  # bigmodel's: with the n-grams, for words never seen
    assert kv.index_to_key == full.index_to_key and np.array_equal(kv.vectors, full.vectors)
    assert kv.get_vecattr(kv.index_to_key[0], "count") == full.get_vecattr(full.index_to_key[0], "count") > 1
    assert (full.min_n, full.max_n, full.bucket) == (2, 4, buckets)
    assert full["governmentalish"].shape == (dim,) and "governmentalish" not in full.key_to_index
    params = lee_ws.last_record("embed:fasttext")["params"]
    assert (params["buckets"], params["min_n"], params["max_n"]) == (buckets, 2, 4)


def test_ngram_settings_in_the_config_file(lee_ws, run_cli):
    text = lee_ws.config_path.read_text(encoding="utf-8")
    assert "min_n = 3" in text and "max_n = 6" in text and "buckets = 2000000" in text
    lee_ws.config_path.write_text(text.replace("buckets = 2000000", "buckets = 3000").replace("max_n = 6", "max_n = 5"),
                                  encoding="utf-8")
    assert run_cli(["embed", "--method", "fasttext", *SMALL], lee_ws.root).exit_code == 0
    params = lee_ws.last_record("embed:fasttext")["params"]
    assert (params["buckets"], params["min_n"], params["max_n"]) == (3000, 3, 5)


@pytest.mark.parametrize("args,names", [
    (["--buckets", "0"], ["--buckets", "positive integer"]),
    (["--buckets", "abc"], ["--buckets", "'abc'"]),
    (["--min-n", "0"], ["--min-n", "--max-n", "1 <= min-n <= max-n"]),
    (["--min-n", "5", "--max-n", "3"], ["got 5 and 3"]),
    (["--max-n", "x"], ["--max-n", "'x'"]),
    (["--buckets", str(10**13)], ["--buckets 10,000,000,000,000", "GiB", "use --buckets"]),
])
def test_bad_ngram_options(lee_ws, run_cli, args, names):
    assert_fails(run_cli(["embed", "--method", "fasttext", *SMALL, *args], lee_ws.root), *names)
    assert not (lee_ws.root / "embeddings" / "fasttext").exists() and hidden(lee_ws) == []


# ----------------------------------------------------------------------------------------------
# 4. staging folders of killed runs


def test_staging_folders_of_dead_runs_are_removed_live_and_foreign_ones_kept(lee_ws, run_cli):
    root = lee_ws.root / "embeddings"
    root.mkdir(exist_ok=True)
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        made = {f".word2vec.staging-{dead}", f".ft.v2.staging-{dead}",  # ours, dead: removed
                f".word2vec.staging-{live.pid}",  # ours, alive: kept
                f".word2vec.staging-{dead}x", f"word2vec.staging-{dead}", f"._x.staging-{dead}"}  # not our names: kept
        for name in made:
            (root / name).mkdir()
            (root / name / "corpus.txt").write_text("a b c\n", encoding="utf-8")
        assert run_cli(["embed", *SMALL], lee_ws.root).exit_code == 0
        left = {p.name for p in root.iterdir()}
        assert left == made - {f".word2vec.staging-{dead}", f".ft.v2.staging-{dead}"} | {"word2vec"}
        assert (root / f".word2vec.staging-{live.pid}" / "corpus.txt").is_file()
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------------------------
# 5. SIGKILL during a run, then a rerun


def cli(ws: Workspace, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "bigmodel_cli", "embed", "-w", str(ws.root), *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["word2vec", "glove"])
def test_sigkill_during_embed_then_rerun_succeeds_nothing_lost_nothing_left(lee_ws, helpers, method):
    common = ["--method", method, "--dim", "8", "--min-count", "2", "-j", "1"]
    first = cli(lee_ws, *common, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    before = helpers.snapshot(lee_ws.root / "embeddings")

    proc = cli(lee_ws, *common, "--epochs", "100000", wait=False)  # would train for hours
    staging = lee_ws.root / "embeddings" / f".{method}.staging-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (staging / "corpus.txt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (staging / "corpus.txt").exists(), "the run never started writing"
    time.sleep(0.5)  # into training
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    kept = {k: v for k, v in helpers.snapshot(lee_ws.root / "embeddings").items() if not k.startswith(".")}
    assert kept == before  # nothing of the earlier run lost
    assert staging.is_dir()  # left by the kill

    started = time.monotonic()
    again = cli(lee_ws, *common, "--epochs", "2")
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 30
    assert hidden(lee_ws) == []
    assert not (lee_ws.meta / "running.json").exists()
    assert [r["status"] for r in lee_ws.records(f"embed:{method}")] == ["ok", "ok"]
    assert lee_ws.last_record(f"embed:{method}")["params"]["epochs"] == 2
    assert json.loads((lee_ws.root / "embeddings" / method / "losses.json").read_text(encoding="utf-8"))["epochs"][-1]["epoch"] == 2
