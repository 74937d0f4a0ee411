"""preprocess replaces its dataset folder whole, but never a file a user put there."""

from __future__ import annotations

import json


def _corpus(path, n=60):
    path.write_text("".join(json.dumps({"text": f"这家店的菜很好吃 第{i}次 good food", "label": "pos" if i % 2 else "neg"},
                                       ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
    return path


def test_a_users_file_in_the_dataset_folder_survives_a_new_run(ws, run_pre, tmp_path):
    corpus = _corpus(tmp_path / "in.jsonl")
    run_pre([corpus], lang="zh")
    (ws.processed / "notes.md").write_text("my notes", encoding="utf-8")
    (ws.processed / ".keep").write_text("", encoding="utf-8")
    result = run_pre([corpus], lang="zh")
    assert (ws.processed / "notes.md").read_text(encoding="utf-8") == "my notes"
    assert (ws.processed / ".keep").exists()
    assert (ws.processed / "train.parquet").is_file()
    recorded = {p["path"] if isinstance(p, dict) else str(p) for p in ws.last_record("preprocess")["outputs"]}
    assert not any("notes.md" in p for p in recorded)  # a user's file is not an output of the stage
    assert result.report["documents"]["kept"] == 60


def test_an_output_of_an_earlier_run_is_not_carried_over(ws, run_pre, tmp_path):
    # A char run writes tokenizer.json; a word run after it must not inherit it (the
    # encoder would read the folder as a char tokenizer's).
    corpus = _corpus(tmp_path / "in.jsonl")
    run_pre([corpus], lang="zh", tokenizer="char")
    assert (ws.processed / "tokenizer.json").is_file()
    run_pre([corpus], lang="zh", tokenizer="word")
    assert not (ws.processed / "tokenizer.json").exists()
