"""`pretrain --from RUN_OR_HF_FOLDER`: continued (domain-adaptive) pretraining of a run of this
workspace or of a local Hugging Face BERT folder (built here with transformers; nothing is
downloaded), with the source's weights, shape and tokenizer; its lineage, staleness, resume,
what later stages do with it, and every refusal in one line with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_fails, metrics, snapshot
from safetensors.torch import load_file

from bigmodel_cli.data.store import read_records
from bigmodel_cli.fileio import sha256_file
from bigmodel_cli.model.runs import model_checkpoint
from bigmodel_cli.training.pretrain import pretrain
from bigmodel_cli.workspace.config import PretrainConfig

transformers = pytest.importorskip("transformers")
from test_hf_import import break_architecture, break_pickle, break_vocab_size, make_hf_folder, remove, review_vocab  # noqa: E402

pytestmark = pytest.mark.usefixtures("wide_console")

TINY = dict(precision="32", dropout=0.1, size="tiny", layers=2, dim=32, heads=2, ffn=64, seq_len=32, batch_size=8,
            max_steps=12, eval_every=4, checkpoint_every=4, log_every=2, keep=2, eval_batches=2, device="cpu")
# What a continued run needs on the command line: the shape is the source's.
RUN_ARGS = ["--precision", "32", "--dropout", "0.1", "--seq-len", "32", "--batch-size", "8", "--eval-every", "2",
            "--log-every", "1", "--eval-batches", "2", "--device", "cpu", "--max-steps", "4"]


def tiny(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


def first_dev_loss(run: Path) -> float:
    return next(m["loss"] for m in metrics(run) if m.get("split") == "dev")


@pytest.fixture
def source_ws(lm_ws):
    """lm_ws with a tiny pretrain run `mlm` that has learned something, to continue from."""
    pretrain(lm_ws, tiny(max_steps=40, lr=5e-3, eval_every=20, checkpoint_every=20), seed=1)
    return lm_ws


# -- from a run of this workspace ----------------------------------------------------------------------
def test_a_run_continues_from_its_weights_and_its_dev_loss(source_ws, monkeypatch, run_cli):
    from bigmodel_cli.training import loop

    started = {}
    fit = loop.fit

    def spy(model, *args, **kwargs):  # the weights the first step starts from
        started.setdefault("weights", {k: v.detach().clone() for k, v in model.state_dict().items()})
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    source = source_ws.root / "runs" / "mlm"
    best = model_checkpoint(source) / "model.safetensors"
    theirs = load_file(best)
    # a learning rate too small to move the weights: the dev loss is the source's, not a new model's
    cfg = tiny(from_run="mlm", lr=1e-9, max_steps=1, eval_every=1)
    result = pretrain(source_ws, cfg, name="more", seed=1)
    assert started["weights"].keys() == theirs.keys()
    assert all(torch.equal(started["weights"][k], theirs[k]) for k in theirs)
    report = result.report
    assert report["from"]["source"] == "mlm" and report["from"]["lm_head"] == "from the source"
    assert report["from"]["weights"] == [{"path": source_ws.relative(best), "sha256": sha256_file(best)}]
    train_json = json.loads((result.folder / "train.json").read_text())
    assert train_json["from"]["weights"][0]["sha256"] == sha256_file(best) and train_json["from_run"] == "mlm"
    # the vocabulary is the source run's, copied into the new run
    assert (result.folder / "vocab.txt").read_bytes() == (source / "vocab.txt").read_bytes()
    started.clear()
    fresh = pretrain(source_ws, tiny(lr=1e-9, max_steps=1, eval_every=1), name="fresh", seed=1)
    source_loss = json.loads((source / "report.json").read_text())["best"]["loss"]
    assert abs(first_dev_loss(result.folder) - source_loss) < 1e-3
    assert first_dev_loss(fresh.folder) - source_loss > 0.1
    # lineage in the stage record and in status
    record = source_ws.last_record("pretrain:more")
    assert record["params"]["base"] == "mlm" and record["params"]["from_run"] == "mlm"
    assert record["from"]["weights"][0]["sha256"] == sha256_file(best)
    hashed = {i["path"]: i["sha256"] for i in record["inputs"]}
    assert hashed[source_ws.relative(best)] == sha256_file(best)
    status = run_cli(["status"], source_ws.root)
    assert "from mlm" in status.output, status.output


def test_latest_is_recorded_as_the_run_it_meant_and_finetune_starts_from_the_continued_run(source_ws, run_cli):
    result = run_cli(["pretrain", "--from", "latest", "--name", "more", *RUN_ARGS], source_ws.root)
    assert result.exit_code == 0, result.output
    assert "from" in result.output and "mlm (run), with its masked-LM head" in result.output
    more = source_ws.root / "runs" / "more"
    assert json.loads((more / "train.json").read_text())["from_run"] == "mlm"
    # the same command again: up to date
    again = run_cli(["pretrain", "--from", "mlm", "--name", "more", *RUN_ARGS], source_ws.root)
    assert again.exit_code == 0 and "skip" in again.output.lower(), again.output
    tuned = run_cli(["finetune", "--from", "more", "--max-steps", "2", "--batch-size", "16", "--max-len", "32",
                     "--lr", "1e-4", "--device", "cpu"], source_ws.root)
    assert tuned.exit_code == 0, tuned.output
    report = json.loads((source_ws.root / "runs" / "classifier" / "report.json").read_text())
    assert report["base"] == "more" and report["init"]["run"] == "more"


# -- from a Hugging Face folder -----------------------------------------------------------------------------
def test_an_hf_folder_continues_with_its_own_vocabulary_and_exports_with_identical_logits(lm_ws, tmp_path, run_cli):
    folder = make_hf_folder(tmp_path / "zh-bert", review_vocab())
    result = run_cli(["pretrain", "--from", folder, "--name", "dapt", *RUN_ARGS], lm_ws.root)
    assert result.exit_code == 0, result.output
    run = lm_ws.root / "runs" / "dapt"
    report = json.loads((run / "report.json").read_text())
    assert report["from"]["kind"] == "hf" and report["from"]["source"] == str(folder)
    assert report["model"]["vocab_size"] == len(review_vocab()) and report["data"]["tokenizer"] == "hf"
    assert report["from"]["weights"][0]["sha256"] == sha256_file(folder / "model.safetensors")
    # the cached ids are the folder's tokenizer's on the workspace's text, not the workspace's vocabulary
    cache = lm_ws.meta / "cache" / "ids"
    done = [json.loads(p.read_text()) for p in cache.glob("processed-train-*.json")]
    hf = [d for d in done if d["encoder"].startswith("hf:")]
    assert len(hf) == 1
    ids_file = next(p for p in cache.glob("processed-train-*.ids.bin")
                    if json.loads(p.with_name(p.name.replace(".ids.bin", ".json")).read_text())["encoder"] == hf[0]["encoder"])
    stream = np.fromfile(ids_file, dtype=hf[0]["dtype"])
    first = next(read_records(lm_ws.processed / "train.parquet"))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(first["text"])["input_ids"]
    assert stream[: len(theirs) - 1].tolist() == theirs[1:]  # the document's ids and its [SEP]
    assert int(stream.max()) < len(review_vocab())
    assert (run / "tokenizer.json").is_file()
    # the continued run exports to transformers and loads back with identical masked-LM logits
    exported = run_cli(["export", "dapt", "--format", "hf"], lm_ws.root)
    assert exported.exit_code == 0, exported.output
    out = lm_ws.root / "exports" / "dapt-hf"
    theirs_model = transformers.BertForMaskedLM.from_pretrained(out).eval()
    from bigmodel_cli.model.runs import load_model

    ours, _ = load_model(run)
    batch = transformers.AutoTokenizer.from_pretrained(out)(["房间很干净，服务也热情！", "隔音太差"], padding=True,
                                                             return_tensors="pt")
    assert batch["input_ids"].tolist() == transformers.AutoTokenizer.from_pretrained(folder)(
        ["房间很干净，服务也热情！", "隔音太差"], padding=True, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        hidden, _ = ours.encode(batch["input_ids"], attention_mask=batch["attention_mask"].bool())
        mine = ours.lm_logits(hidden)
        logits = theirs_model(**batch).logits
    assert (mine - logits).abs().max() < 1e-4
    # evaluate, and a classifier finetuned from the continued run reads text through the folder's tokenizer
    evaluated = run_cli(["evaluate", "dapt", "--split", "dev"], lm_ws.root)
    assert evaluated.exit_code == 0 and "perplexity" in evaluated.output.lower(), evaluated.output
    tuned = run_cli(["finetune", "--from", "dapt", "--name", "clf", "--max-steps", "2", "--batch-size", "16",
                     "--max-len", "32", "--lr", "1e-4", "--device", "cpu"], lm_ws.root)
    assert tuned.exit_code == 0, tuned.output
    assert (lm_ws.root / "runs" / "clf" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    predicted = run_cli(["predict", "房间很干净", "--run", "clf"], lm_ws.root)
    assert predicted.exit_code == 0 and json.loads(predicted.stdout.splitlines()[0])["label"], predicted.output
    # new weights in the folder make the run stale; lineage shows the folder
    make_hf_folder(tmp_path / "other", review_vocab(), seed=1)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    status = run_cli(["status"], lm_ws.root)
    assert f"from {folder}" in status.output and f"{folder}/model.safetensors changed" in status.output, status.output


def test_a_folder_without_a_masked_lm_head_gets_a_new_one_and_says_so(lm_ws, tmp_path, run_cli):
    folder = make_hf_folder(tmp_path / "encoder", review_vocab(), arch="BertModel")
    result = run_cli(["pretrain", "--from", folder, "--name", "dapt", *RUN_ARGS[:-1], "2"], lm_ws.root)
    assert result.exit_code == 0, result.output
    assert "has no masked-LM head: a new one is trained" in result.output
    report = json.loads((lm_ws.root / "runs" / "dapt" / "report.json").read_text())
    assert report["from"]["lm_head"] == "new" and "lm_head.bias" in report["from"]["new"]


# -- refusals ---------------------------------------------------------------------------------------------------
def objective_clm(folder: Path) -> None:
    pass


BROKEN = {
    "pickle only": (break_pickle, [], ["pytorch_model.bin is a pickle", "convert it to safetensors"]),
    "no config": (remove("config.json"), [], ["no config.json"]),
    "no weights": (remove("model.safetensors"), [], ["no model.safetensors"]),
    "roberta": (break_architecture, [], ["RobertaForMaskedLM is not supported; supported: BERT"]),
    "vocab size": (break_vocab_size, [], ["the tokenizer holds 66 tokens", "69 rows"]),
    "clm": (objective_clm, ["--objective", "clm"], ["--objective clm", "masked-LM BERT", "--objective mlm"]),
    "other shape": (objective_clm, ["--layers", "4"], ["--layers 4 (it has 2)", "keeps the shape of"]),
    "too long": (objective_clm, ["--seq-len", "128"], ["--seq-len 128 is longer than", "holds 64", "--seq-len 64 or less"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_bad_folder_or_option_is_refused_in_one_line_with_nothing_written(lm_ws, tmp_path, run_cli, case):
    from test_hf_import import vocabulary

    folder = make_hf_folder(tmp_path / "bert", vocabulary())
    breaks, args, names = BROKEN[case]
    breaks(folder)
    before = snapshot(lm_ws.root)
    line = assert_fails(run_cli(["pretrain", "--from", folder, *RUN_ARGS, *args], lm_ws.root), *names)
    assert "Traceback" not in line
    assert snapshot(lm_ws.root) == before


def test_a_bad_run_or_option_is_refused_in_one_line_with_nothing_written(source_ws, run_cli):
    runs = source_ws.root / "runs"
    shutil.copytree(runs / "mlm", runs / "cut", symlinks=True)
    lines = (runs / "cut" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (runs / "cut" / "vocab.txt").write_text("".join(t + "\n" for t in lines[:-5]), encoding="utf-8")
    cases = [
        (["--from", "nosuch"], ["no run named 'nosuch'", "known runs: mlm, cut"]),
        (["--from", "mlm", "--objective", "clm"], ["--objective clm", "trained with mlm", "--objective mlm"]),
        (["--from", "mlm", "--dim", "64"], ["--dim 64 (it has 32)", "keeps the shape of run 'mlm'"]),
        (["--from", "mlm", "--name", "mlm"], ["--name mlm is the run it would continue from"]),
        (["--from", "mlm", "--init-embeddings", "w2v"], ["--init-embeddings w2v", "--from"]),
        (["--from", "cut"], [f"holds {len(lines) - 5:,} tokens", f"{len(lines):,} rows"]),
    ]
    before = snapshot(source_ws.root)
    for args, names in cases:
        assert_fails(run_cli(["pretrain", *RUN_ARGS, "--name", "more", *args], source_ws.root), *names)
        assert snapshot(source_ws.root) == before, args


# -- resume after a kill -----------------------------------------------------------------------------------
SIGNAL_AT_STEP = str(Path(__file__).with_name("signal_at_step.py"))


def _cli(ws, *args, signal_at: tuple[int, str] | None = None):
    start = [SIGNAL_AT_STEP, str(signal_at[0]), signal_at[1]] if signal_at else ["-m", "bigmodel_cli"]
    return subprocess.run([sys.executable, *start, "pretrain", "-w", str(ws.root), *args],
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)


@pytest.mark.slow
def test_a_killed_continued_run_resumes_to_the_same_weights(source_ws):
    common = [*RUN_ARGS[:-1], "8", "--checkpoint-every", "4", "--eval-every", "4"]
    straight = _cli(source_ws, *common, "--from", "mlm", "--name", "straight")
    assert straight.returncode == 0, straight.stderr
    killed = _cli(source_ws, *common, "--from", "mlm", "--name", "crash", signal_at=(6, "SIGKILL"))
    assert killed.returncode == -9
    crash = source_ws.root / "runs" / "crash"
    resumed = _cli(source_ws, *common, "--name", "crash", "--resume", "auto")  # --from comes from the run's train.json
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(source_ws.root / "runs" / "straight" / "checkpoints" / "step-00000008" / "model.safetensors")
    b = load_file(crash / "checkpoints" / "step-00000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((crash / "report.json").read_text())
    assert report["resumed_from"] and report["from"]["source"] == "mlm" and report["from"]["lm_head"] == "from the source"


def test_special_tokens_of_a_bert_vocabulary_are_never_masked():
    """Google's vocabularies keep [UNK] [CLS] [SEP] [MASK] at 100-103, past the ids bigmodel's own
    vocabularies reserve: continued pretraining must not mask or predict them either."""
    from bigmodel_cli.data.vocab import Vocab
    from bigmodel_cli.training.lm_data import MLMTask

    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(96)]
    vocab = Vocab(tokens, [0] * len(tokens))
    blocks = np.random.default_rng(0).integers(104, 200, size=(64, 128)).astype(np.int32)
    blocks[:, 0], blocks[:, 60], blocks[:, 90] = 101, 102, 100
    batch = MLMTask(blocks, None, batch_size=64, seed=3, vocab=vocab).batch(0, 0, slice(None))
    chosen = batch["labels"] != -100
    assert not chosen[:, [0, 60, 90]].any()
    assert 0.14 < chosen.float().mean().item() * 128 / 125 < 0.16
    assert (batch["ids"][chosen] == 103).float().mean().item() > 0.75  # masked with the vocabulary's own [MASK]


def test_a_resume_with_another_source_is_refused_naming_from(source_ws, run_cli):
    assert run_cli(["pretrain", "--from", "mlm", "--name", "more", *RUN_ARGS], source_ws.root).exit_code == 0
    pretrain(source_ws, tiny(max_steps=2), name="other", seed=1)
    before = snapshot(source_ws.root / "runs" / "more")
    assert_fails(run_cli(["pretrain", "--from", "other", "--name", "more", "--resume", "auto", *RUN_ARGS], source_ws.root),
                 "cannot resume run 'more' with other options: --from other (the run has mlm)")
    assert snapshot(source_ws.root / "runs" / "more") == before


def test_the_token_cache_keys_on_the_tokenizer(lm_ws, tmp_path):
    """The same processed text encoded with the workspace's words and with a folder's WordPiece
    gets two cache files, each with its own ids; neither reads the other's."""
    from bigmodel_cli.data.tokenizer import Encoder
    from bigmodel_cli.model.hf_import import prepare_base
    from bigmodel_cli.training.lm_data import cached_blocks

    base = prepare_base(make_hf_folder(tmp_path / "bert", review_vocab()), lm_ws.meta / "hf")
    cache = tmp_path / "cache"
    train = lm_ws.processed / "train.parquet"
    words = cached_blocks(train, Encoder.from_folder(lm_ws.processed), 32, cache, True)
    pieces = cached_blocks(train, Encoder.from_folder(base), 32, cache, True)
    assert len(list(cache.glob("processed-train-*.ids.bin"))) == 2
    assert not np.array_equal(np.asarray(words.ids[:100]), np.asarray(pieces.ids[:100]))
    again = cached_blocks(train, Encoder.from_folder(base), 32, cache, True)  # read back, not mixed up
    assert np.array_equal(np.asarray(again.ids), np.asarray(pieces.ids))
