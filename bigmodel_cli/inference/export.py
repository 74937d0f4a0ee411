"""`bigmodel export`: a run as a Hugging Face model folder, or as ONNX.

Hugging Face: config.json, model.safetensors (our weights renamed by `model.HF_NAMES`; the
tied output embedding stored once, as transformers expects), vocab.txt and tokenizer files,
so that `from_pretrained` gives BertForMaskedLM (mlm runs), BertLMHeadModel (clm runs) or
BertForSequenceClassification (classifiers, with their label names) with the same logits.

Hugging Face's BERT tokenizer does not segment Chinese into words: its basic tokenizer
splits every CJK character apart. Our vocabulary holds jieba words, so the exported
tokenizer skips basic tokenization and expects text already segmented into words separated
by spaces. The README.md written beside the model gives the recipe.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli.data.tokenizer import TOKENIZER_FILE
from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import read_json, remove_stale, replace_dir, write_json

FORMATS = ("hf", "onnx")


def architecture(cfg) -> str:
    if cfg.num_labels:
        return "BertForSequenceClassification"
    return "BertLMHeadModel" if cfg.causal else "BertForMaskedLM"


def hf_config(cfg) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": [architecture(cfg)], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads, "intermediate_size": cfg.ffn, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_id,
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }
    if cfg.causal and not cfg.num_labels:
        config["is_decoder"] = True
    if cfg.num_labels:
        labels = list(cfg.labels) or [str(i) for i in range(cfg.num_labels)]
        config.update(id2label={str(i): n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)},
                      classifier_dropout=cfg.classifier_dropout, problem_type="single_label_classification")
    return config


def hf_state_dict(model) -> dict:
    from bigmodel_cli.model.transformer import hf_name

    return {hf_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}


RECIPE = """# {name}: exported by bigmodel

Load it with transformers:

```python
from transformers import BertTokenizer, {arch}
tokenizer = BertTokenizer.from_pretrained("{folder}")
model = {arch}.from_pretrained("{folder}")
```

## Tokenise as in training

The vocabulary holds **words** as bigmodel segmented them ({segmenter}), plus (when
preprocess built it with --pieces) single characters and `##`-continuation
characters. Hugging Face's BERT tokenizer would split Chinese into single characters, so
this tokenizer has basic tokenization switched off: give it text that is already
segmented, words separated by single spaces. Each word is looked up whole, and a word
outside the vocabulary is split into pieces by WordPiece, exactly as bigmodel does.

```python
import jieba                                    # bigmodel used: {segmenter}
words = jieba.lcut("房间很干净，服务也好")          # or: bigmodel segment "..." in the workspace
batch = tokenizer(" ".join(words), return_tensors="pt")
logits = model(**batch).logits
```

For identical ids, clean the text first as bigmodel did (settings in bigmodel_meta.json:
NFKC, HTML, URLs and e-mails to [URL]/[EMAIL]) and use the same jieba dictionary and
HMM setting. Only a word with a character never seen in training becomes [UNK]
(every such word, without pieces), as in bigmodel.
"""


def export_hf(folder: Path, staging: Path, out: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    from bigmodel_cli.model.runs import load_model

    model, checkpoint = load_model(folder)
    cfg = model.cfg
    if cfg.num_labels and cfg.pooling != "cls":
        raise UserError(f"run '{folder.name}' pools by mean, which BertForSequenceClassification cannot do",
                        hint="finetune with --pooling cls for a Hugging Face export, or export --format onnx")
    save_file(hf_state_dict(model), staging / "model.safetensors", metadata={"format": "pt"})
    write_json(staging / "config.json", hf_config(cfg))
    tokens = [line.split("\t", 1)[0] for line in (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    (staging / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if (folder / TOKENIZER_FILE).is_file():
        return _export_tokenizer_json(folder, staging, out, model, checkpoint)
    write_json(staging / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": False, "do_basic_tokenize": False,
        "tokenize_chinese_chars": False, "model_max_length": cfg.max_positions,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"})
    write_json(staging / "special_tokens_map.json", {t.strip("[]").lower() + "_token": t for t in SPECIAL_TOKENS})
    meta = read_json(folder / "meta.json")
    write_json(staging / "bigmodel_meta.json", {**meta, "run": folder.name, "checkpoint": checkpoint.name})
    segmenter = meta.get("segmenter", {})
    seg_text = ", ".join(f"{k}={v}" for k, v in segmenter.items()) if isinstance(segmenter, dict) else str(segmenter)
    (staging / "README.md").write_text(RECIPE.format(name=folder.name, arch=architecture(cfg), folder=out, segmenter=seg_text),
                                       encoding="utf-8")
    return {"format": "hf", "architecture": architecture(cfg), "folder": out, "checkpoint": checkpoint}


TOKENIZER_RECIPE = """# {name}: exported by bigmodel

The tokenizer is the one bigmodel trained and used ({kind}, `tokenizer.json`): the same raw
text gives the same ids here as in bigmodel, with nothing to segment or clean first.

```python
from transformers import AutoTokenizer, {arch}, pipeline
tokenizer = AutoTokenizer.from_pretrained("{folder}")
model = {arch}.from_pretrained("{folder}")
{usage}
```
"""
USAGE = {
    "BertForSequenceClassification": 'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)\n'
                                     'classify("房间很干净，服务也好", truncation=True, top_k=None)',
    "BertForMaskedLM": 'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)\nfill("房间很[MASK]净")',
    "BertLMHeadModel": 'batch = tokenizer("房间很干净", return_tensors="pt")\nlogits = model(**batch).logits',
}


def _export_tokenizer_json(folder: Path, staging: Path, out: Path, model, checkpoint: Path) -> dict[str, Any]:
    """The run's own tokenizer.json, loaded by AutoTokenizer as it is: the class is
    PreTrainedTokenizerFast, which keeps the file's normaliser (BertTokenizerFast would
    rebuild it from do_lower_case and friends). model_max_length is what the run reads,
    so that truncation=True cuts where predict cuts."""
    from bigmodel_cli.training.classify_data import classifier_max_len

    cfg = model.cfg
    shutil.copyfile(folder / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    max_len = classifier_max_len(folder, model) if cfg.num_labels else cfg.max_positions
    write_json(staging / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
    write_json(staging / "special_tokens_map.json", {t.strip("[]").lower() + "_token": t for t in SPECIAL_TOKENS})
    meta = read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
    write_json(staging / "bigmodel_meta.json", {**meta, "run": folder.name, "checkpoint": checkpoint.name})
    kind = meta.get("tokenizer", {}).get("kind", "hf")
    (staging / "README.md").write_text(TOKENIZER_RECIPE.format(name=folder.name, kind=kind, arch=architecture(cfg), folder=out,
                                                               usage=USAGE[architecture(cfg)]), encoding="utf-8")
    return {"format": "hf", "architecture": architecture(cfg), "folder": out, "checkpoint": checkpoint, "tokenizer": kind}


def export_onnx(folder: Path, staging: Path, out: Path) -> dict[str, Any]:
    """The model's logits (classifier: (batch, labels); LM: (batch, length, vocab)) as ONNX,
    verified against PyTorch with onnxruntime when it is installed."""
    import torch

    from bigmodel_cli.model.runs import load_model

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package", hint='pip install "bigmodel-cli[onnx]" (onnx, onnxscript, onnxruntime)') from None
    model, checkpoint = load_model(folder)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            hidden, _ = self.m.encode(input_ids, attention_mask=attention_mask, causal=self.m.cfg.causal)
            return self.m.classify(hidden, attention_mask) if self.m.cfg.num_labels else self.m.lm_logits(hidden)

    wrapper = Logits(model).eval()
    ids = torch.randint(len(SPECIAL_TOKENS), model.cfg.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    path = staging / "model.onnx"
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=model.cfg.max_positions)
    import io
    import logging
    import warnings

    # The exporter narrates each of its passes and warns about optional packages
    # (torchvision) that a text model never uses; the one line that matters is ours.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (ids, mask), str(path), input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
                          dynamo=True, external_data=False, verbose=False)
    shutil.copyfile(folder / "vocab.txt", staging / "vocab.txt")
    if (folder / TOKENIZER_FILE).is_file():
        shutil.copyfile(folder / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    result: dict[str, Any] = {"format": "onnx", "file": out / "model.onnx", "checkpoint": checkpoint}
    try:
        import onnxruntime
    except ImportError:
        result["verified"] = None
        return result
    check_ids = torch.randint(len(SPECIAL_TOKENS), model.cfg.vocab_size, (3, 11))
    check_mask = torch.ones_like(check_ids)
    check_mask[1, 7:] = 0
    with torch.no_grad():
        expected = wrapper(check_ids, check_mask).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": check_ids.numpy(), "attention_mask": check_mask.numpy()})[0]
    import numpy as np

    result["max_abs_diff"] = float(np.abs(got - expected).max())
    result["verified"] = result["max_abs_diff"] < 1e-4
    if not result["verified"]:
        raise UserError(f"the ONNX model's logits differ from PyTorch's by {result['max_abs_diff']:.2e}",
                        hint="report this; use --format hf meanwhile")
    return result


# Folders the workspace itself keeps: an export never replaces one, nor anything inside one.
OWNED = ("runs", "data", ".bigmodel", "embeddings", "reports", "explanations")
MARKER = "bigmodel_export.json"


def export(ws, run: str | None, fmt: str = "hf", out: Path | None = None) -> dict[str, Any]:
    from bigmodel_cli.model.runs import find_run

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    folder = find_run(ws, run)
    out = Path(os.path.abspath(Path(out).expanduser())) if out else ws.root / "exports" / f"{folder.name}-{fmt}"
    check_destination(ws, out, fmt)
    with ws.lock(f"export {folder.name}"):
        remove_stale(out.parent, f".{glob.escape(out.name)}.staging-*", rf"\.{re.escape(out.name)}\.staging-(\d+)")
        staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
        staging.mkdir(parents=True)
        try:
            result = (export_hf if fmt == "hf" else export_onnx)(folder, staging, out)
            write_json(staging / MARKER, {"format": fmt, "run": folder.name, "checkpoint": result["checkpoint"].name})
            replace_dir(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result


def check_destination(ws, out: Path, fmt: str) -> None:
    """Refuse a destination whose replacement could lose something bigmodel did not make:
    the workspace, a folder above it or inside one it keeps, a link, a file, or a folder
    with other contents than an earlier export of the same format."""
    real, root = out.resolve(), ws.root.resolve()
    hint = "choose a new or empty folder, e.g. --out exports/NAME"
    if root.is_relative_to(real):
        raise UserError(f"--out {out} is the workspace or a folder above it; an export would replace it", hint=hint)
    for name in OWNED:
        if real.is_relative_to(root / name):
            raise UserError(f"--out {out} is inside the workspace's {name}/, which bigmodel keeps for its own files", hint=hint)
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; an export replaces a folder, never a link's target",
                        hint="give the real folder's path")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", hint=hint)
    if out.is_dir() and any(out.iterdir()) and not earlier_export(out, fmt):
        raise UserError(f"--out {out} is not empty and holds no earlier bigmodel {fmt} export; "
                        "bigmodel replaces only folders it made", hint=hint)


def earlier_export(folder: Path, fmt: str) -> bool:
    """Whether `folder` holds what an export of format `fmt` writes (and nothing else)."""
    names = {p.name for p in folder.iterdir()}
    if MARKER in names:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return read_json(folder / MARKER).get("format") == fmt
        return False
    # exports made before the marker existed
    if fmt == "hf":
        return {"config.json", "model.safetensors", "bigmodel_meta.json"} <= names <= HF_FILES
    return names <= {"model.onnx", "vocab.txt", TOKENIZER_FILE, ".model.onnx.tmp"}


HF_FILES = {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "bigmodel_meta.json", "README.md", MARKER}
