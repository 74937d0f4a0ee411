"""`bigmodel explain`: the mathematics on a tiny model trained on a toy task where the
deciding word is known, the files, and the bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bigmodel_cli.data.vocab import SPECIAL_TOKENS, Vocab
from bigmodel_cli.explain.explain import Explainer, rollout, summarize_faithfulness
from bigmodel_cli.model.transformer import ModelConfig, Transformer

FILLER = [f"w{i}" for i in range(30)]
WORDS = list(SPECIAL_TOKENS) + FILLER + ["good", "bad"]
META = {"clean": {"nfkc": True, "strip_html": True, "urls": "replace", "emails": "replace"},
        "segment": {"lang": "en", "backend": "jieba", "hmm": True, "user_dict": None, "lowercase": False, "stem": False}}


def toy_example(rng: random.Random) -> tuple[list[str], int]:
    label = rng.randrange(2)
    words = [rng.choice(FILLER) for _ in range(rng.randint(5, 11))]
    words.insert(rng.randrange(len(words) + 1), "good" if label else "bad")
    return words, label


def train_toy(seed: int = 0) -> Transformer:
    """A classifier whose label is decided by one word ('good' or 'bad') among fillers."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vocab = Vocab(WORDS, [0] * len(WORDS))
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=2, dim=32, heads=2, ffn=64, max_positions=16,
                                    dropout=0.0, attention_dropout=0.0, num_labels=2, labels=["neg", "pos"], lm_head=False,
                                    classifier_dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        batch = [toy_example(rng) for _ in range(32)]
        width = max(len(w) for w, _ in batch) + 2
        ids = torch.tensor([[2] + vocab.encode(w) + [3] + [0] * (width - len(w) - 2) for w, _ in batch])
        logits = model.classify(model.encode(ids, attention_mask=ids != 0)[0], ids != 0)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def toy():
    model = train_toy()
    return model, Explainer(model, Vocab(WORDS, [0] * len(WORDS)))


@pytest.fixture
def toy_ws(ws, toy, save_run):
    """The toy classifier saved as a finetune run (runs/toy/) in a workspace."""
    save_run(ws, "toy", toy[0], WORDS, META)
    return ws


def test_toy_model_learned_the_task(toy):
    model, explainer = toy
    rng = random.Random(99)
    right = 0
    for _ in range(40):
        words, label = toy_example(rng)
        ids, _ = explainer.encode_words(words)
        right += int(explainer.probs(torch.tensor([ids]))[0].argmax()) == label
    assert right >= 38


def test_integrated_gradients_completeness_gap_shrinks_with_steps(toy):
    _, explainer = toy
    words = ["w1", "w2", "good", "w3", "w4", "w5"]
    gaps = [explainer.explain("t", words, ["ig"], steps=s, internal_batch_size=7).ig_delta for s in (2, 8, 64)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05
    exp = explainer.explain("t", words, ["ig"], steps=64)
    x = torch.tensor([explainer.encode_words(words)[0]])
    with torch.no_grad():
        f = float(explainer.logits(x)[0, exp.target_index])
    assert sum(exp.scores["ig"]) == pytest.approx(f - _baseline_logit(explainer, x, exp.target_index), abs=0.01)


def _baseline_logit(explainer, x, target):
    emb = explainer.model.embeddings.tokens(x).detach()
    words = (x[0] > 4)
    emb[0, words] = explainer.model.embeddings.tokens.weight[0].detach()
    with torch.no_grad():
        return float(explainer.logits(x, token_embeds=emb)[0, target])


def test_batching_the_steps_does_not_change_the_result(toy):
    _, explainer = toy
    words = ["w7", "bad", "w8", "w9"]
    a = explainer.explain("t", words, ["ig"], steps=20, internal_batch_size=1).scores["ig"]
    b = explainer.explain("t", words, ["ig"], steps=20, internal_batch_size=20).scores["ig"]
    assert np.allclose(a, b, atol=1e-5)


def test_gradient_methods_find_the_deciding_word(toy):
    _, explainer = toy
    rng = random.Random(5)
    hits = {m: 0 for m in ("saliency", "grad-input", "ig")}
    for _ in range(20):
        words, _ = toy_example(rng)
        exp = explainer.explain("t", words, list(hits), steps=32)
        decider = next(i for i, w in enumerate(exp.words) if w in ("good", "bad"))
        for m in hits:
            hits[m] += int(np.argmax(exp.scores[m]) == decider)
    assert hits["ig"] >= 18 and hits["grad-input"] >= 15


def test_removing_top_attributed_words_hurts_more_than_random(toy):
    _, explainer = toy
    rng = random.Random(11)
    rows = []
    for i in range(25):
        words, _ = toy_example(rng)
        exp = explainer.explain("t", words, ["ig", "grad-input", "attention"], steps=16)
        rows.append(explainer.faithfulness(exp.words, exp.scores, exp.target_index, "mask", seed=i))
    table = summarize_faithfulness(rows)
    assert table["ig"]["comprehensiveness"] > table["random"]["comprehensiveness"] + 0.2
    assert table["ig"]["sufficiency"] < table["random"]["sufficiency"]
    assert table["ig"]["beats_random"] is True and "beats_random" not in table["random"]
    deleted = explainer.faithfulness(words, exp.scores, exp.target_index, "delete", seed=0)
    assert set(deleted) == {"ig", "grad-input", "attention", "random"}


def test_attention_scores_are_the_explicit_weights_and_rollout_rows_sum_to_one(toy):
    model, explainer = toy
    words = ["w1", "good", "w2"]
    exp = explainer.explain("t", words, ["attention"], layer=1, head=0)
    ids = torch.tensor([explainer.encode_words(words)[0]])
    _, att = model.encode(ids, need_weights=True)
    assert np.allclose(exp.scores["attention"], att[1][0, 0, 0, 1:4].detach().numpy(), atol=1e-6)
    r = rollout(torch.stack([a[0].detach() for a in att]))
    assert torch.allclose(r.sum(-1), torch.ones(5), atol=1e-5)


# -- through the CLI ----------------------------------------------------------------------------
def test_explain_command_writes_a_self_contained_page(toy_ws, run_cli):
    result = run_cli(["explain", "w1 w2 good w3", "--png", "--steps", "16"], toy_ws.root)
    assert result.exit_code == 0, result.output
    assert "label: pos" in result.output and "good" in result.output and "completeness gap" in result.output
    out = toy_ws.root / "explanations" / "toy"
    page = next(out.glob("text-*.html")).read_text(encoding="utf-8")
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and page.count("<svg") == 2 * (1 + 2)  # per layer: the mean and each head
    for method in ("attention", "rollout", "saliency", "grad-input", "ig"):
        assert f'<span class="name">{method}</span>' in page
    scores = [json.loads(line) for line in next(out.glob("text-*.jsonl")).read_text().splitlines()]
    assert scores[0]["words"] == ["w1", "w2", "good", "w3"] and scores[0]["predicted"] == "pos"
    assert next(out.glob("text-*-1.png")).read_bytes()[:4] == b"\x89PNG"
    assert toy_ws.last_record("explain:toy")["metrics"]["predicted"] == "pos"


def test_faithfulness_over_a_file(toy_ws, run_cli, tmp_path):
    rng = random.Random(3)
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(" ".join(toy_example(rng)[0]) for _ in range(8)) + "\n", encoding="utf-8")
    result = run_cli(["explain", "--input", path, "--faithfulness", "--method", "ig,attention", "--steps", "8"], toy_ws.root)
    assert result.exit_code == 0, result.output
    out = toy_ws.root / "explanations" / "toy"
    saved = json.loads(next(out.glob("texts-*-faith-mask-faithfulness.json")).read_text())
    table = saved["methods"]
    assert saved["removal"] == "mask" and set(table) == {"ig", "attention", "random"} and table["ig"]["examples"] == 8
    low, high = table["random"]["comprehensiveness_ci95"]
    assert table["random"]["draws"] == 10 and low < table["random"]["comprehensiveness"] < high
    assert "comprehensiveness" in result.output and "--removal mask" in " ".join(result.output.split())
    deleted = run_cli(["explain", "--input", path, "--faithfulness", "--method", "ig", "--steps", "8", "--removal", "delete"], toy_ws.root)
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(next(out.glob("texts-*-faith-delete-faithfulness.json")).read_text())["removal"] == "delete"
    assert next(out.glob("texts-*-faith-mask-faithfulness.json"))  # the mask run's table is still there
    pages = {p.name: p.read_text(encoding="utf-8") for p in out.glob("texts-*-faith-*.html")}
    assert len(pages) == 2 and all(("--removal " + ("delete" if "delete" in n else "mask")) in page for n, page in pages.items())


@pytest.mark.parametrize("args,message", [
    (["   "], "the text to explain is empty"),
    (["w1 good", "--target", "maybe"], "its labels are: neg, pos"),
    (["w1 good", "--layer", "5"], "--layer 5 is out of range: the model has 2 layers"),
    (["w1 good", "--head", "2"], "--head 2 is out of range: the model has 2 heads"),
    (["w1 good", "--method", "lime"], "--method must be one of"),
    ([], "give one of: TEXT, --input FILE or --split NAME"),
])
def test_bad_input(toy_ws, run_cli, args, message):
    result = run_cli(["explain", *args], toy_ws.root)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_all_unknown_words_still_explained(toy_ws, run_cli):
    result = run_cli(["explain", "zzz yyy", "--method", "saliency"], toy_ws.root)
    assert result.exit_code == 0, result.output
    assert "outside the vocabulary" in result.output


def test_masked_lm_run_is_refused(toy_ws, run_cli, save_run):
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=1, dim=16, heads=2, ffn=32, max_positions=16))
    save_run(toy_ws, "mlm", model, WORDS, META)
    result = run_cli(["explain", "w1 good", "--run", "mlm"], toy_ws.root)
    assert result.exit_code == 2 and "masked-LM pretrain run" in result.output and "bigmodel finetune" in result.output
    newest = run_cli(["explain", "w1 good", "--method", "saliency"], toy_ws.root)  # the newest run is mlm: the classifier is used
    assert newest.exit_code == 0 and "label: pos" in newest.output


def test_causal_run_explains_the_next_word(toy_ws, run_cli, save_run):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(WORDS), layers=2, dim=16, heads=2, ffn=32, max_positions=16, causal=True))
    save_run(toy_ws, "gpt", model, WORDS, META)
    result = run_cli(["explain", "w1 w2 w3", "--run", "gpt", "--target", "good", "--steps", "8", "--json"], toy_ws.root)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert data["kind"] == "causal" and data["target"] == "good" and data["words"] == ["w1", "w2", "w3"]
    assert set(data["scores"]) == {"attention", "rollout", "saliency", "grad-input", "ig"}
    unknown = run_cli(["explain", "w1", "--run", "gpt", "--target", "nope"], toy_ws.root)
    assert unknown.exit_code == 2 and "not in the vocabulary of this run" in unknown.output
