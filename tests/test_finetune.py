"""`bigmodel finetune`: a real (tiny) classifier from a pretrain run and from scratch, the
run folder other stages load, batches as pure functions, class weights, early stopping,
exact resume after SIGKILL, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from classify_fixtures import (
    FINETUNE_ARGS,
    SCRATCH,
    TINY_FINETUNE,
    classifier_ws,
    labelled_ws,
    reviews,
)
from conftest import metrics
from safetensors.torch import load_file

from bigmodel_cli.data.tokenizer import TextPipeline
from bigmodel_cli.data.vocab import Vocab
from bigmodel_cli.errors import UserError
from bigmodel_cli.model.runs import find_run, load_model, run_kind
from bigmodel_cli.training.classify_data import Encoded, encode_ids
from bigmodel_cli.training.finetune import ClassifyTask, class_weights, finetune
from bigmodel_cli.workspace.config import FinetuneConfig


@pytest.fixture(scope="module")
def cws(tmp_path_factory):
    return classifier_ws(tmp_path_factory.mktemp("finetune") / "ws")


def tiny(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY_FINETUNE, **kw})


def test_from_pretrain_run_writes_a_run_that_other_stages_load(cws):
    folder = cws.root / "runs" / "classifier"
    for name in ("config.json", "vocab.txt", "meta.json", "train.json", "metrics.jsonl", "loss.png", "report.json"):
        assert (folder / name).is_file(), name
    ck = folder / "checkpoints"
    assert (ck / "last").is_symlink() and (ck / "best").is_symlink()
    config = json.loads((folder / "config.json").read_text())
    assert config["num_labels"] == 2 and config["labels"] == ["neg", "pos"] and config["lm_head"] is False
    assert run_kind(folder) == "finetune" and find_run(cws, None, kind="pretrain").name == "mlm"
    report = json.loads((folder / "report.json").read_text())
    assert report["base"] == "mlm"
    assert report["init"]["new"] == ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"]
    assert all(k.startswith("lm_head.") for k in report["init"]["unused"]) and report["init"]["unused"]
    # the encoder starts from the pretrained weights: the embeddings moved from there, not from random
    base = load_file(cws.root / "runs" / "mlm" / "checkpoints" / "last" / "model.safetensors")
    model, checkpoint = load_model(folder)
    assert checkpoint.resolve() == (ck / "best").resolve()
    assert (model.embeddings.tokens.weight - base["embeddings.tokens.weight"]).abs().max() < 0.05
    assert not hasattr(model, "lm_head") and model.classifier.out_features == 2
    # dev macro-F1 evaluations, the best one picked
    dev = [m for m in metrics(folder) if m.get("split") == "dev"]
    assert dev and all({"macro_f1", "accuracy", "loss"} <= set(m) for m in dev)
    assert report["best"]["macro_f1"] == pytest.approx(max(m["macro_f1"] for m in dev), abs=1e-6)
    # the text pipeline of the run replays preprocessing
    pipe = TextPipeline(folder)
    assert pipe.encode(pipe.tokens("房间很干净"), 32)[0] == pipe.vocab.id("[CLS]")
    record = cws.last_record("finetune:classifier")
    assert record["params"]["base"] == "mlm" and "dev_macro_f1" in record["metrics"]
    assert any(o["path"].endswith("model.safetensors") for o in record["outputs"])
    assert finetune(cws, tiny(), seed=1).skipped
    with pytest.raises(UserError, match="--resume auto"):
        finetune(cws, tiny(lr=5e-4), seed=1)


def test_scratch_mean_pooling_balance_and_frozen_embeddings(cws):
    result = finetune(cws, tiny(**SCRATCH, pooling="mean", balance=True, freeze_embeddings=True), seed=2)
    assert result.name == "classifier-scratch" and result.report["base"] == "scratch" and result.report["init"] is None
    model, _ = load_model(result.folder)
    assert model.cfg.pooling == "mean" and not hasattr(model, "pooler") and model.cfg.layers == 1
    assert result.report["class_weights"] == {"neg": pytest.approx(1.0, abs=0.2), "pos": pytest.approx(1.0, abs=0.2)}
    assert result.report["trainable_parameters"] < result.report["parameters"]
    # frozen: the embeddings are still the seeded initialisation
    torch.manual_seed(2)
    from bigmodel_cli.model.transformer import Transformer

    fresh = Transformer(model.cfg)
    assert torch.equal(fresh.embeddings.tokens.weight, model.embeddings.tokens.weight)


def test_batches_are_pure_functions_of_seed_epoch_and_index():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(5, 50, size=rng.integers(3, 40))) for _ in range(100)]
    data = Encoded.from_lists(docs, list(rng.integers(0, 3, size=100)))
    task = ClassifyTask(data, None, batch_size=10, seed=7, pad_id=0, num_labels=3)
    again = ClassifyTask(data, None, batch_size=10, seed=7, pad_id=0, num_labels=3)
    assert task.steps_per_epoch == 10
    a, b = task.batch(1, 3, slice(None)), again.batch(1, 3, slice(None))
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["labels"], b["labels"])
    epoch0 = task.batches(0)
    assert sorted(epoch0.ravel().tolist()) == list(range(100))  # each document once per epoch
    assert not np.array_equal(epoch0, task.batches(1))
    halves = [task.batch(1, 3, slice(0, 5)), task.batch(1, 3, slice(5, 10))]
    assert torch.equal(torch.cat([h["ids"] for h in halves]), a["ids"])  # padded alike, any split
    assert torch.equal(a["attention_mask"], a["ids"] != 0)
    # length sorting within windows keeps batches tight
    spread = [np.ptp(data.lengths[batch]) for batch in epoch0]
    assert np.mean(spread) < np.ptp(data.lengths) / 2


def test_class_weights_and_the_weighted_loss():
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2)
    assert w.tolist() == pytest.approx([100 / 180, 100 / 20]) and (w[labels]).mean() == pytest.approx(1.0)
    data = Encoded.from_lists([[2, 5, 3]] * 100, labels.tolist())
    task = ClassifyTask(data, None, batch_size=100, seed=0, pad_id=0, num_labels=2, weights=w)
    batch = task.batch(0, 0, slice(None))
    assert task.count(batch) == pytest.approx(100.0)

    class Const(torch.nn.Module):  # logits that ignore the input
        def encode(self, ids, attention_mask=None):
            return torch.zeros(ids.shape[0], ids.shape[1], 1), None

        def classify(self, hidden, mask):
            return torch.tensor([[2.0, 0.0]]).expand(hidden.shape[0], 2)

    loss, terms, correct = task.loss(Const(), batch)
    ce = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0]] * 100), torch.from_numpy(labels), reduction="none")
    assert float(loss) == pytest.approx(float((ce * torch.from_numpy(w[labels])).sum()), rel=1e-5)
    assert float(terms) == pytest.approx(100.0) and int(correct) == 90


class Noisy(torch.nn.Module):
    """A classifier small enough to check R-Drop by hand: mean of embeddings, dropout, linear."""

    def __init__(self, p: float):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out, self.drop = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 2), torch.nn.Dropout(p)

    def encode(self, ids, attention_mask=None):
        return self.drop(self.emb(ids)), None

    def classify(self, hidden, mask):
        return self.out(hidden.mean(1))


def rdrop_batch():
    data = Encoded.from_lists([[2, 5, 3], [2, 6, 7, 3], [2, 8, 3], [2, 9, 9, 3]] * 4, [0, 1, 0, 1] * 4)
    return ClassifyTask(data, None, batch_size=16, seed=0, pad_id=0, num_labels=2).batch(0, 0, slice(None))


def test_rdrop_without_randomness_is_the_plain_loss():
    batch = rdrop_batch()
    plain = ClassifyTask.__new__(ClassifyTask)
    plain.rdrop = 0.0
    rdrop = ClassifyTask.__new__(ClassifyTask)
    rdrop.rdrop = 5.0
    model = Noisy(0.0)  # no dropout: both passes agree, the KL term is 0
    assert torch.allclose(rdrop.loss(model, batch)[0], plain.loss(model, batch)[0], rtol=1e-6)
    model = Noisy(0.5).eval()  # in evaluation R-Drop is off: one pass, no dropout
    assert torch.equal(rdrop.loss(model, batch)[0], plain.loss(model, batch)[0])
    assert torch.equal(rdrop.loss(model, batch)[1], torch.tensor(16))


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes():
    import torch.nn.functional as F

    batch = rdrop_batch()
    task = ClassifyTask.__new__(ClassifyTask)
    task.rdrop = 2.0
    model = Noisy(0.5)
    torch.manual_seed(1)
    loss, terms, _ = task.loss(model, batch)
    # the same two passes by hand: one stacked forward, so the same dropout draws
    torch.manual_seed(1)
    hidden, _ = model.encode(torch.cat([batch["ids"]] * 2))
    first, second = model.classify(hidden, None).chunk(2)
    y = batch["labels"]
    ce = (F.cross_entropy(first, y, reduction="none") + F.cross_entropy(second, y, reduction="none")) / 2
    p, q = F.softmax(first, -1), F.softmax(second, -1)
    kl = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)) / 2
    assert float(kl.sum().detach()) > 1e-3  # the passes differ
    assert float(loss.detach()) == pytest.approx(float((ce + 2.0 * kl).sum().detach()), rel=1e-5)
    assert int(terms) == 16
    loss.backward()
    assert model.emb.weight.grad.abs().sum() > 0


def test_finetune_with_rdrop(cws):
    result = finetune(cws, tiny(rdrop=1.0, max_steps=4, eval_every=2), name="rdrop", seed=3)
    assert result.report["steps"] == 4 and cws.last_record("finetune:rdrop")["params"]["rdrop"] == 1.0
    assert all(np.isfinite(m["loss"]) for m in metrics(result.folder) if "loss" in m)


def test_encode_ids_cuts_like_the_text_pipeline(tmp_path):
    vocab = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "##b"], [0] * 9)
    with open(tmp_path / "vocab.txt", "w", encoding="utf-8") as handle:
        vocab.save(handle)
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")
    pipe = TextPipeline(tmp_path)
    assert encode_ids(vocab, ["a", "b", "x"], 10) == [2, 5, 6, 1, 3]
    assert encode_ids(vocab, ["a", "b", "a", "b"], 4) == [2, 5, 6, 3]
    for tokens in ([], ["a"], ["a", "b", "x"], ["c", "ab", "b", "a", "c", "b"]):  # "ab" is split into pieces
        for max_len in range(2, len(tokens) + 5):
            assert encode_ids(vocab, tokens, max_len) == pipe.encode(tokens, max_len), (tokens, max_len)


def test_early_stopping_keeps_the_best_checkpoint(cws):
    result = finetune(cws, tiny(epochs=20, eval_every=2, early_stopping=1, lr=1e-6, warmup=0.0), name="early", seed=1)
    assert result.report["stop_reason"].startswith("early stopping")
    assert result.report["steps"] < 20 * result.report["data"]["steps_per_epoch"]
    best = os.readlink(result.folder / "checkpoints" / "best")
    assert best == f"step-{result.report['best']['step']:08d}"


# -- bad input --------------------------------------------------------------------------------
def test_no_labels(tmp_path, run_cli):
    ws = labelled_ws(tmp_path / "ws", [{"text": t} for t, _ in reviews(40)])
    result = run_cli(["finetune", *FINETUNE_ARGS, *_scratch_args()], ws.root)
    assert result.exit_code == 2, result.output
    assert "has no labels" in result.output and "--label-field" in result.output
    assert len(result.output.strip().splitlines()) <= 2 and "Traceback" not in result.output


def test_single_class(tmp_path, run_cli):
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": "pos"} for t, _ in reviews(40)[:40]])
    result = run_cli(["finetune", *FINETUNE_ARGS, *_scratch_args()], ws.root)
    assert result.exit_code == 2
    assert "single class ('pos'" in result.output and "at least two" in result.output


def test_no_pretrain_run_suggests_scratch(tmp_path, run_cli):
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": label} for t, label in reviews(20)])
    result = run_cli(["finetune", *FINETUNE_ARGS], ws.root)
    assert result.exit_code == 2 and "no pretrain run" in result.output and "--from scratch" in result.output
    unknown = run_cli(["finetune", *FINETUNE_ARGS, "--from", "nope"], ws.root)
    assert unknown.exit_code == 2 and "no run named 'nope'" in unknown.output


def test_option_problems_at_once(tmp_path, run_cli):
    ws = labelled_ws(tmp_path / "ws", [{"text": t, "label": label} for t, label in reviews(20)])
    result = run_cli(["finetune", "--pooling", "max", "--dropout", "1.5", "--lr", "-1", "--epochs", "x", "--max-len", "2",
                      "--rdrop", "-1"], ws.root)
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    for piece in ("--pooling must be cls or mean", "--dropout must be in [0, 1)", "--lr must be a positive number",
                  "--epochs must be a whole number", "--max-len must be at least 3", "--rdrop must be 0 (off) or positive"):
        assert piece in out, piece
    result = run_cli(["finetune", "--rdrop", "1", "--dropout", "0"], ws.root)
    assert result.exit_code == 2 and "--rdrop needs dropout" in " ".join(result.output.split())


def test_finetune_refuses_a_classifier_as_base(cws, run_cli):
    result = run_cli(["finetune", *FINETUNE_ARGS, "--from", "classifier", "--name", "again"], cws.root)
    assert result.exit_code == 2 and "is a finetune run, not a pretrain run" in result.output


def _scratch_args() -> list[str]:
    return ["--from", "scratch", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32"]


# -- CLI and exact resume (subprocesses) ----------------------------------------------------------
def test_cli_prints_the_report(cws, run_cli):
    result = run_cli(["finetune", *FINETUNE_ARGS, *_scratch_args(), "--name", "cli"], cws.root)
    assert result.exit_code == 0, result.output
    assert "finetune cli (from scratch)" in result.output and "best on dev" in result.output
    again = run_cli(["finetune", *FINETUNE_ARGS, *_scratch_args(), "--name", "cli"], cws.root)
    assert again.exit_code == 0 and "up to date" in again.output


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(cws):
    common = ["-w", str(cws.root), *FINETUNE_ARGS, "--epochs", "2", "--eval-every", "5", "--checkpoint-every", "5",
              "--dropout", "0.1", "--log-every", "1"]

    def cli(*args, kill_at=None):
        start = [str(Path(__file__).with_name("signal_at_step.py")), str(kill_at), "SIGKILL"] if kill_at else ["-m", "bigmodel_cli"]
        return subprocess.run([sys.executable, *start, "finetune", *common, *args], capture_output=True,
                              text=True, env=dict(os.environ), timeout=600)

    assert cli("--name", "straight").returncode == 0
    killed = cli("--name", "crash", kill_at=13)
    assert killed.returncode == -9
    crash = cws.root / "runs" / "crash"
    assert os.readlink(crash / "checkpoints" / "last") == "step-00000010"
    resumed = cli("--name", "crash", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    straight = cws.root / "runs" / "straight"
    last = os.readlink(straight / "checkpoints" / "last")
    assert os.readlink(crash / "checkpoints" / "last") == last
    a = load_file(straight / "checkpoints" / last / "model.safetensors")
    b = load_file(crash / "checkpoints" / last / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("tokens_per_s", "elapsed_s")} for m in ms]  # noqa: E731
    assert strip(metrics(crash)) == strip(metrics(straight))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(cws):
    """finetune --nproc 2 (torchrun, gloo): each process takes half of every batch; the
    losses, the dev scores, the chosen best step and the weights match one process."""
    common = ["-w", str(cws.root), *FINETUNE_ARGS, *_scratch_args(), "--dropout", "0", "--log-every", "1",
              "--eval-every", "4", "--max-steps", "8"]

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "bigmodel_cli", "finetune", *common, *args], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    cli("--name", "one")
    two = cli("--name", "ddp", "--nproc", "2")
    assert two.stdout.count("finetune ddp") == 1  # rank 0 alone prints the report
    one_m, two_m = metrics(cws.root / "runs" / "one"), metrics(cws.root / "runs" / "ddp")
    assert [m["step"] for m in two_m] == [m["step"] for m in one_m] and len(two_m) >= 10
    for x, y in zip(one_m, two_m):
        assert y.get("split") == x.get("split")
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5)
        if "macro_f1" in x:
            assert y["macro_f1"] == pytest.approx(x["macro_f1"], abs=1e-6)
    a = load_file(cws.root / "runs" / "one" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(cws.root / "runs" / "ddp" / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    report = json.loads((cws.root / "runs" / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["best"]["step"] == json.loads(
        (cws.root / "runs" / "one" / "report.json").read_text())["best"]["step"]
    records = cws.records("finetune:ddp")  # rank 0 alone writes the record
    assert len(records) == 1 and records[0]["status"] == "ok" and records[0]["metrics"]["steps"] == 8
