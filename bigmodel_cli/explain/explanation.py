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

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "words": self.words, "unknown": self.unknown, "kind": self.kind,
                "predicted": self.predicted, "target": self.target, "probability": round(self.probability, 6),
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "scores": {m: [round(float(s), 6) for s in v] for m, v in self.scores.items()},
                "ig": {"steps": self.ig_steps, "completeness_gap": self.ig_delta} if self.ig_delta is not None else None}

    def top(self, method: str, n: int = 5) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The words that push most towards the target, and (signed methods) most against it."""
        pairs = list(zip(self.words, self.scores[method]))
        pro = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:n]
        con = sorted((p for p in pairs if p[1] < 0), key=lambda p: p[1])[:n] if method in SIGNED else []
        return pro, con
