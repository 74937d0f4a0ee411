"""One explanation: the words of a text, its prediction, and each method's score per word; what
explain computes and the renderer draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SIGNED = {"grad-input", "ig"}


@dataclass
class Explanation:
    text: str
    words: list[str]  # the words as the model saw them (segmented, cleaned)
    unknown: list[bool]  # words outside the vocabulary (seen as [UNK])
    kind: str  # "classifier" or "causal"
    target: str
    target_index: int
    probability: float
    predicted: str
    probabilities: dict[str, float]
    scores: dict[str, list[float]] = field(default_factory=dict)
    ig_delta: float | None = None
    ig_steps: int | None = None
    attention: list | None = None  # [layer][head] (T x T) numpy arrays for the HTML page (of several texts: [layer][mean])
    # Set by by_words for character and subword models: `words`, `scores` and `unknown` then
    # hold the words a reader sees, and these the tokens the model read (as the attention maps).
    units: list[str] | None = None
    unit_scores: dict[str, list[float]] | None = None
    kept: list[int] | None = field(default=None, repr=False)  # the text's units the model read (the rest was cut)

    def by_words(self, groups: list[tuple[str, list[int]]]) -> None:
        """Score the words a reader sees: each word (text, the indices of its units among the
        text's units) gets the sum of its units' scores. Units the model did not read (cut to
        its length) are left out, and so is a word with none read."""
        where = {unit: k for k, unit in enumerate(self.kept if self.kept is not None else range(len(self.words)))}
        merged = [(word, [where[i] for i in units if i in where]) for word, units in groups]
        merged = [(word, members) for word, members in merged if members]
        if len(merged) == len(self.words) and all(len(m) == 1 for _, m in merged):
            return  # one unit per word: nothing to merge
        self.units, self.unit_scores = list(self.words), dict(self.scores)
        unknown = self.unknown
        self.words = [word for word, _ in merged]
        self.unknown = [any(unknown[k] for k in members) for _, members in merged]
        self.scores = {m: [float(sum(v[k] for k in members)) for _, members in merged] for m, v in self.unit_scores.items()}

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "words": self.words, "unknown": self.unknown, "kind": self.kind,
                "predicted": self.predicted, "target": self.target, "probability": round(self.probability, 6),
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "scores": {m: [round(float(s), 6) for s in v] for m, v in self.scores.items()},
                "ig": {"steps": self.ig_steps, "completeness_gap": self.ig_delta} if self.ig_delta is not None else None,
                **({"tokens": self.units, "token_scores": {m: [round(float(s), 6) for s in v] for m, v in self.unit_scores.items()}}
                   if self.units is not None else {})}

    def top(self, method: str, n: int = 5) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The words that push most towards the target, and (signed methods) most against it."""
        pairs = list(zip(self.words, self.scores[method]))
        pro = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:n]
        con = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:n] if method in SIGNED else []
        return pro, con
