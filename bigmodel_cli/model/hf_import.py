"""A local Hugging Face BERT folder read into our model: its config, its weights under our
names and the tokenizer that `transformers.AutoTokenizer` would build from it.

Accepted: config.json with model_type "bert" (any BERT architecture: BertForMaskedLM,
BertModel, BertForPreTraining, BertForSequenceClassification...), model.safetensors (or a
sharded model.safetensors.index.json), and tokenizer.json or vocab.txt (with
tokenizer_config.json when present). The weights are renamed by the inverse of
`transformer.HF_NAMES`; heads we have no use for (next-sentence prediction, another task's
classifier) are left out and reported. Pickled weights (pytorch_model.bin) are never
loaded: a pickle runs code when it is read.

The tokenizer is rebuilt as transformers' BertTokenizer builds it: the normalizer follows
tokenizer_config.json's do_lower_case, tokenize_chinese_chars and strip_accents (their
defaults are True, True and None), whatever tokenizer.json's normalizer says. That is what
`AutoTokenizer.from_pretrained` gives, so bigmodel sees the ids the folder's users see.

Every check runs before anything is loaded or written, each failure one line naming the
file and the value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli.data.vocab import SPECIAL_TOKENS
from bigmodel_cli.errors import UserError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
VOCAB = "vocab.txt"
# Weights in formats we never read: pickles run code when loaded; the others need TF / Flax.
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
CONVERT = "convert it to safetensors: `model.save_pretrained(path, safe_serialization=True)` in transformers"

SUPPORTED = ("BertForMaskedLM", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
             "BertLMHeadModel", "BertForNextSentencePrediction", "BertForTokenClassification",
             "BertForQuestionAnswering", "BertForMultipleChoice")
# BertConfig's defaults: transformers uses them for a key config.json leaves out.
BERT_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                 "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                 "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
                 "is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True}
# Special-token options of tokenizer_config.json, and the token bigmodel needs for each.
SPECIAL_OPTIONS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}


def is_hf_folder(value: str, runs: Path | None = None) -> bool:
    """Whether `--from VALUE` names a Hugging Face folder rather than a run: a path with a
    slash (or starting with ~ or .), or a bare name that is no run in `runs` but a folder
    holding config.json."""
    if value in ("latest", "scratch"):
        return False
    if "/" in value or os.sep in value or value.startswith(("~", ".")):
        return True
    if runs is not None and (runs / value).is_dir():
        return False
    return (Path(value) / CONFIG).is_file()


def read_hf_folder(path: Path | str):
    """(our ModelConfig fields, state dict under our names, tokenizers.Tokenizer, meta) of a
    Hugging Face BERT folder. meta says where it came from, the tokenizer's settings, and
    which weights were left out."""
    folder = check_folder(path)
    config = read_config(folder)
    weight_files = find_weights(folder)
    tokenizer, tokenizer_meta = read_tokenizer(folder)
    rows = embedding_rows(folder, weight_files)
    model_cfg = model_config(folder, config, tokenizer, rows)
    state, unused = read_weights(folder, weight_files, model_cfg, config)
    model_cfg["lm_head"] = any(k.startswith("lm_head.") for k in state)
    meta = {"source": str(folder), "architectures": config.get("architectures") or [], "tokenizer": tokenizer_meta,
            "unused_weights": unused}
    return model_cfg, state, tokenizer, meta


def read_hf_shape(path: Path | str) -> tuple[Path, dict[str, Any], list[Path]]:
    """(folder, our ModelConfig fields, weight files) of a Hugging Face BERT folder, with every
    check of read_hf_folder but the weights' shapes, and without loading the weights: what a
    caller needs to check its own options before anything is read in full or written."""
    folder = check_folder(path)
    config = read_config(folder)
    weight_files = find_weights(folder)
    tokenizer, _ = read_tokenizer(folder)
    return folder, model_config(folder, config, tokenizer, embedding_rows(folder, weight_files)), weight_files


# -- the folder and its config -------------------------------------------------------------
def check_folder(path: Path | str) -> Path:
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder",
                        hint="--from takes a pretrain run's name, latest, scratch, or a Hugging Face BERT folder")
    return folder


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG}, so it is not a Hugging Face model folder",
                        hint="pass the folder that `save_pretrained` wrote (config.json, model.safetensors, vocab.txt or tokenizer.json)")
    config = read_json_object(path)
    if "model_type" not in config and (folder / "checkpoints").is_dir():
        raise UserError(f"{folder} is a bigmodel run, not a Hugging Face folder",
                        hint=f"pass the run's name (--from {folder.name}) when it is in this workspace, "
                             "or export it: bigmodel export --format hf")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise UserError(f"{path}: field 'architectures' must be a list, got {architectures!r}")
    unsupported = [a for a in architectures if a not in SUPPORTED]
    if unsupported:
        raise UserError(f"{path}: {unsupported[0]} is not supported; supported: BERT ({', '.join(SUPPORTED[:4])}...)")
    if config.get("model_type") != "bert":
        raise UserError(f"{path}: model_type {config.get('model_type')!r} is not supported; supported: BERT (model_type \"bert\")")
    return {**BERT_DEFAULTS, **config}


def find_weights(folder: Path) -> list[Path]:
    """The safetensors files holding the weights (one, or the shards an index names)."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no 'weight_map' naming the shards")
        shards = sorted({folder / str(name) for name in weight_map.values()})
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise UserError(f"{index} names {missing[0]}, which is not in {folder}",
                            hint="copy every shard of the model into the folder")
        return shards
    pickled = next((name for name in PICKLES if (folder / name).is_file()), None)
    if pickled == "pytorch_model.bin" or pickled == "pytorch_model.bin.index.json":
        raise UserError(f"{folder / pickled} is a pickle, which bigmodel never loads (it can run code); {CONVERT}")
    if pickled:
        raise UserError(f"{folder / pickled}: bigmodel reads PyTorch weights in safetensors only; {CONVERT}")
    raise UserError(f"{folder}: no {WEIGHTS}", hint="save the model with `save_pretrained` (safetensors is its default)")


# -- the tokenizer ----------------------------------------------------------------------------
def read_tokenizer(folder: Path):
    """(tokenizers.Tokenizer, its settings) as AutoTokenizer would build them from the folder."""
    options = read_json_object(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
    has_json, has_vocab = (folder / TOKENIZER_JSON).is_file(), (folder / VOCAB).is_file()
    if not has_json and not has_vocab:
        raise UserError(f"{folder}: no {TOKENIZER_JSON} or {VOCAB}, so its text cannot be turned into ids",
                        hint="save the tokenizer into the folder too: tokenizer.save_pretrained(path)")
    check_special_tokens(folder, options)
    tokenizer_class = str(options.get("tokenizer_class") or "BertTokenizer")
    if tokenizer_class.removesuffix("Fast") == "BertTokenizer":
        tokenizer, meta = bert_tokenizer(folder, options, has_json)
    elif has_json:
        tokenizer, meta = load_tokenizer_json(folder / TOKENIZER_JSON), {"class": tokenizer_class, "file": TOKENIZER_JSON}
    else:
        raise UserError(f"{folder / TOKENIZER_CONFIG}: tokenizer_class {tokenizer_class} is not supported without a "
                        f"{TOKENIZER_JSON}; supported: BertTokenizer, or any tokenizer saved as tokenizer.json")
    tokenizer = plain(tokenizer)
    check_template(folder, tokenizer)
    return tokenizer, meta


def check_template(folder: Path, tokenizer) -> None:
    """The classifier reads [CLS] and cutting keeps [SEP]: the tokenizer must add both."""
    ids = tokenizer.encode("a").ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if not ids or ids[0] != cls or ids[-1] != sep:
        raise UserError(f"{folder / TOKENIZER_JSON}: its post_processor does not put [CLS] before a text and [SEP] after it",
                        hint="save the tokenizer with BERT's template ([CLS] $A [SEP])")


def check_special_tokens(folder: Path, options: dict[str, Any]) -> None:
    for key, ours in SPECIAL_OPTIONS.items():
        value = options.get(key, ours)
        if isinstance(value, dict):  # an AddedToken saved by older transformers
            value = value.get("content")
        if value != ours:
            raise UserError(f"{folder / TOKENIZER_CONFIG}: {key} is {value!r}; bigmodel needs BERT's special tokens "
                            f"({' '.join(SPECIAL_TOKENS)})")


def bert_tokenizer(folder: Path, options: dict[str, Any], has_json: bool):
    """What transformers' BertTokenizer builds: BertNormalizer with the config's options,
    BertPreTokenizer, WordPiece over the vocabulary, [CLS] $A [SEP]."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    lowercase = options.get("do_lower_case", True)
    chinese = options.get("tokenize_chinese_chars", True)
    accents = options.get("strip_accents")
    for key, value in (("do_lower_case", lowercase), ("tokenize_chinese_chars", chinese)):
        if not isinstance(value, bool):
            raise UserError(f"{folder / TOKENIZER_CONFIG}: {key} must be true or false, got {value!r}")
    if accents is not None and not isinstance(accents, bool):
        raise UserError(f"{folder / TOKENIZER_CONFIG}: strip_accents must be true, false or null, got {accents!r}")
    saved = load_tokenizer_json(folder / TOKENIZER_JSON) if has_json else None
    if saved is not None:
        kind = json.loads(saved.to_str())["model"].get("type")
        if kind != "WordPiece":
            raise UserError(f"{folder / TOKENIZER_JSON}: a {kind} model, but tokenizer_class is BertTokenizer, "
                            "which needs WordPiece")
        vocab = saved.get_vocab(with_added_tokens=False)
    else:
        vocab = read_vocab_txt(folder / VOCAB)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"{folder / (TOKENIZER_JSON if has_json else VOCAB)}: the vocabulary lacks {' '.join(missing)}",
                        hint="bigmodel needs BERT's special tokens in the vocabulary")
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese,
                                                      strip_accents=accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.post_processor = (saved.post_processor if saved is not None and saved.post_processor is not None
                                else processors.TemplateProcessing(
                                    single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                                    special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]))
    added = saved.get_added_tokens_decoder() if saved is not None else {}
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens(specials + [t for t in added.values() if t.content not in SPECIAL_TOKENS and t.special])
    tokenizer.add_tokens([t for t in added.values() if not t.special])
    meta = {"class": "BertTokenizer", "file": TOKENIZER_JSON if has_json else VOCAB, "do_lower_case": lowercase,
            "tokenize_chinese_chars": chinese, "strip_accents": accents}
    return tokenizer, meta


def read_vocab_txt(path: Path) -> dict[str, int]:
    """vocab.txt as tokenizers reads it for transformers: one token a line, trailing white
    space cut, its id the line number (a token that comes twice keeps its last line)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as UTF-8 text ({exc.__class__.__name__})") from None
    if lines and lines[-1] == "":
        lines.pop()
    return {token.rstrip(): i for i, token in enumerate(lines)}


def load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any bad file
        raise UserError(f"{path}: not a tokenizer file that the tokenizers library can read ({str(exc).splitlines()[0]})") from None


def plain(tokenizer):
    """No padding or truncation baked in: bigmodel cuts and pads the ids itself."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# -- the model ----------------------------------------------------------------------------------
def embedding_rows(folder: Path, files: list[Path]) -> int | None:
    """Rows of the word-embedding matrix, read from the safetensors header alone."""
    for path in files:
        with open_safetensors(path) as handle:
            for key in handle.keys():
                if key.removeprefix("bert.") == "embeddings.word_embeddings.weight":
                    return handle.get_slice(key).get_shape()[0]
    return None


def open_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})",
                        hint="the file is truncated or corrupt; copy or save it again") from None


def model_config(folder: Path, config: dict[str, Any], tokenizer, rows: int | None) -> dict[str, Any]:
    """Our ModelConfig fields from BERT's config; a value our model cannot reproduce refused."""
    from bigmodel_cli.model.transformer import config_problems

    path = folder / CONFIG
    unsupported = {"hidden_act": ("gelu",), "position_embedding_type": ("absolute", None), "add_cross_attention": (False,)}
    for key, allowed in unsupported.items():
        if config.get(key) not in allowed:
            raise UserError(f"{path}: {key} {config.get(key)!r} is not supported; supported: {' or '.join(map(repr, allowed))}")
    if config.get("embedding_size", config["hidden_size"]) != config["hidden_size"]:
        raise UserError(f"{path}: embedding_size {config['embedding_size']} differs from hidden_size; supported: BERT's equal sizes")
    ours = {"vocab_size": config["vocab_size"], "layers": config["num_hidden_layers"], "dim": config["hidden_size"],
            "heads": config["num_attention_heads"], "ffn": config["intermediate_size"],
            "max_positions": config["max_position_embeddings"], "type_vocab_size": config["type_vocab_size"],
            "dropout": config["hidden_dropout_prob"], "attention_dropout": config["attention_probs_dropout_prob"],
            "layer_norm_eps": config["layer_norm_eps"], "pad_id": tokenizer.token_to_id("[PAD]"),
            "causal": bool(config["is_decoder"]), "lm_head": True, "num_labels": 0, "labels": []}
    problems = config_problems(ours)
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if rows is not None and rows != config["vocab_size"]:
        raise UserError(f"{path}: vocab_size is {config['vocab_size']:,}, but the word-embedding matrix has {rows:,} rows")
    if size != config["vocab_size"]:
        raise UserError(f"{folder}: the tokenizer holds {size:,} tokens, but the model's word-embedding matrix has "
                        f"{config['vocab_size']:,} rows; the ids would not match", hint="use the tokenizer saved with this model")
    return ours


def read_weights(folder: Path, files: list[Path], model_cfg: dict[str, Any], config: dict[str, Any]):
    """(state dict under our names, the folder's tensors left out). The encoder must be
    complete; the pooler and the masked-LM head are taken when the folder has them whole."""
    import torch

    from bigmodel_cli.model.transformer import ModelConfig, Transformer, hf_name

    tensors = {}
    for path in files:
        with open_safetensors(path) as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    tensors = hf_keys(tensors)
    # The names our model has (pooler and LM head included), on the meta device: no memory.
    with torch.device("meta"):
        reference = Transformer(ModelConfig.from_dict({**model_cfg, "lm_head": True, "num_labels": 1, "pooling": "cls"}))
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    state, missing = {}, []
    for name, shape in expected.items():
        theirs = hf_name(name)
        if theirs == "cls.predictions.bias" and theirs not in tensors:
            theirs = "cls.predictions.decoder.bias"  # older saves keep the bias only there
        if theirs not in tensors:
            missing.append(theirs)
            continue
        tensor = tensors[theirs]
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"{folder}: {theirs} has shape {tuple(tensor.shape)}, but config.json describes {tuple(shape)}",
                            hint="the config and the weights do not belong together")
        state[name] = tensor.to(torch.float32)
    encoder_missing = [m for m in missing if not m.startswith(("cls.", "bert.pooler."))]
    if encoder_missing:
        raise UserError(f"{folder}: the weights lack {encoder_missing[0]}"
                        + (f" and {len(encoder_missing) - 1} more encoder tensors" if len(encoder_missing) > 1 else ""),
                        hint="the folder holds no complete BERT encoder")
    for prefix in ("lm_head.", "pooler."):  # a head counts only when it is whole
        if any(k not in state for k in expected if k.startswith(prefix)):
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    if "lm_head.bias" in state and not tied(tensors, config):
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}  # our head is tied to the embeddings
    used = {hf_name(k) for k in state}
    if "lm_head.bias" in state:  # the tied decoder and its bias are the tensors already used
        used |= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    unused = sorted(k for k in tensors if k not in used and not k.endswith("position_ids"))
    return state, unused


def hf_keys(tensors: dict) -> dict:
    """Hugging Face's names as BertForMaskedLM has them: `bert.` before the encoder (a
    BertModel saves without it) and LayerNorm's weight/bias (old TF conversions say gamma/beta)."""
    renamed = {}
    bare = not any(k.startswith("bert.") for k in tensors)
    for key, value in tensors.items():
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if bare and key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        renamed[key] = value
    return renamed


def tied(tensors: dict, config: dict[str, Any]) -> bool:
    """Whether the masked-LM decoder is the word-embedding matrix, as our head assumes."""
    import torch

    decoder = tensors.get("cls.predictions.decoder.weight")
    if decoder is None:
        return bool(config.get("tie_word_embeddings", True))
    return bool(torch.equal(decoder, tensors["bert.embeddings.word_embeddings.weight"]))


# -- a finetune base ------------------------------------------------------------------------------
# finetune starts from a base folder that carries the tokenizer (tokenizer.json, vocab.txt,
# meta.json: what data.tokenizer.Encoder reads and copy_tokenizer_files copies into the
# run). For a Hugging Face folder that base is prepared in the workspace, beside a
# SOURCE file saying where the weights are and the model config under our names; the
# weights themselves are read from the folder when the run starts, never copied.
SOURCE = "hf_source.json"
KEY_FILES = (CONFIG, TOKENIZER_JSON, VOCAB, TOKENIZER_CONFIG)


def prepare_base(path: Path | str, cache: Path) -> Path:
    """cache/NAME-KEY/ for the Hugging Face folder at `path` (checked whole first, so that a
    refusal writes nothing). KEY hashes the folder's path, its config and tokenizer files
    and its weights' sizes and times: a changed folder gets a new base, and a base once
    written never changes under a run that reads it."""
    from bigmodel_cli.data.tokenizer import save_tokenizer
    from bigmodel_cli.fileio import remove_stale, write_json

    folder = check_folder(path)
    model_cfg, _, tokenizer, meta = read_hf_folder(folder)
    target = cache / f"{_slug(folder.name)}-{source_key(folder)[:12]}"
    if (target / SOURCE).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale(cache, ".*.staging-*", r"\..+\.staging-(\d+)")
    staging = cache / f".{target.name}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        save_tokenizer(tokenizer, staging, {"kind": "hf", "source": str(folder), **meta["tokenizer"]})
        write_json(staging / SOURCE, {"source": str(folder), "architectures": meta["architectures"], "config": model_cfg,
                                      "unused_weights": meta["unused_weights"]})
        try:
            os.rename(staging, target)
        except OSError:  # another process prepared the same base meanwhile: the same files
            if not (target / SOURCE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def source_key(folder: Path) -> str:
    digest = hashlib.sha256(str(folder).encode())
    for name in KEY_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for path in find_weights(folder):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "hf"


def is_hf_base(base: Path | None) -> bool:
    return base is not None and (base / SOURCE).is_file()


def base_source(base: Path) -> dict[str, Any]:
    """The prepared base's SOURCE: source (the folder), config (ours), unused_weights."""
    return read_json_object(base / SOURCE)


def base_files(base: Path) -> list[Path]:
    """What decides a finetune from this base: the tokenizer files and the folder's config
    and weights (their hashes go into the stage's record)."""
    folder = Path(base_source(base)["source"])
    return [base / VOCAB, base / TOKENIZER_JSON, folder / CONFIG, *find_weights(folder)]
