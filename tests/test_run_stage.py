"""run_stage, the skeleton every stage runs in: skip when unchanged, run when forced, the
lock held while the work runs, the record's outputs hashed, a failed record with its error."""

from __future__ import annotations

import hashlib

import pytest

from bigmodel_cli.errors import UserError
from bigmodel_cli.workspace.records import Done, run_stage


def _input(ws, text="a corpus\n"):
    path = ws.root / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return ws.hash_paths([path])


def _work(ws, calls, text="out\n"):
    """Work that writes one output file and counts its calls."""
    def work():
        calls.append(ws.holder())
        out = ws.root / "out.txt"
        out.write_text(text, encoding="utf-8")
        return Done("value", [out], {"n": len(calls)})
    return work


def _records(ws, stage="demo"):
    return ws.records(stage)


def test_runs_once_then_skips_until_forced_or_changed(ws):
    inputs, calls = _input(ws), []
    first = run_stage(ws, "demo", {"k": 1}, inputs, _work(ws, calls), lock="demo")
    assert not first.skipped and first.value == "value" and first.record["status"] == "ok"

    again = run_stage(ws, "demo", {"k": 1}, inputs, _work(ws, calls), lock="demo")
    assert again.skipped and again.value is None
    assert again.record == first.record and len(calls) == 1 and len(_records(ws)) == 1

    forced = run_stage(ws, "demo", {"k": 1}, inputs, _work(ws, calls), lock="demo", may_skip=False)
    assert not forced.skipped and len(calls) == 2 and len(_records(ws)) == 2

    other = run_stage(ws, "demo", {"k": 2}, inputs, _work(ws, calls), lock="demo")
    assert not other.skipped and len(calls) == 3
    changed = run_stage(ws, "demo", {"k": 2}, _input(ws, "another corpus\n"), _work(ws, calls), lock="demo")
    assert not changed.skipped and len(calls) == 4


def test_an_output_changed_since_is_run_again(ws):
    inputs, calls = _input(ws), []
    run_stage(ws, "demo", {}, inputs, _work(ws, calls), lock="demo")
    (ws.root / "out.txt").write_text("edited by hand\n", encoding="utf-8")
    assert not run_stage(ws, "demo", {}, inputs, _work(ws, calls), lock="demo").skipped


def test_the_record_holds_the_outputs_hashed_params_inputs_and_config(ws):
    inputs = _input(ws)
    outcome = run_stage(ws, "demo", {"k": 1}, inputs, _work(ws, [], "hello\n"), lock="demo",
                        sections=("project", "embed"))
    record = outcome.record
    assert record["outputs"] == [{"path": "out.txt", "sha256": hashlib.sha256(b"hello\n").hexdigest()}]
    assert record["inputs"] == inputs and record["params"] == {"k": 1} and record["metrics"] == {"n": 1}
    assert set(record["config"]) == {"project", "embed"}
    assert _records(ws) == [record]


def test_known_hashes_and_extra_go_into_the_record(ws):
    out = ws.root / "out.txt"
    out.write_text("x", encoding="utf-8")
    outcome = run_stage(ws, "demo", {}, _input(ws), lambda: Done(1, [out], {}, known_hashes={out: "f" * 64},
                                                                  extra={"note": "n"}), lock="demo")
    assert outcome.record["outputs"][0]["sha256"] == "f" * 64 and outcome.record["note"] == "n"
    assert outcome.record["config"] is None  # no sections given


def test_the_lock_is_held_during_the_work_and_released_after(ws):
    calls = []
    run_stage(ws, "demo", {}, _input(ws), _work(ws, calls), lock="demo --name x")
    assert calls[0]["command"] == "demo --name x"
    assert ws.holder() is None and not ws.lock_held()


def test_a_second_writer_is_refused_while_the_lock_is_held(ws):
    with ws.lock("preprocess"):
        with pytest.raises(UserError):
            run_stage(ws, "demo", {}, _input(ws), _work(ws, []), lock="demo")
    assert _records(ws) == []


def test_without_main_no_lock_and_no_record(ws):
    calls = []
    outcome = run_stage(ws, "demo", {}, _input(ws), _work(ws, calls), lock="demo", main=False)
    assert calls == [None] and outcome.record is None and not outcome.skipped and _records(ws) == []
    with pytest.raises(UserError):
        run_stage(ws, "demo", {}, _input(ws), _raises(UserError("bad")), lock="demo", main=False)
    assert _records(ws) == []


def _raises(exc):
    def work():
        raise exc
    return work


def test_a_user_error_leaves_a_failed_record_with_its_line(ws):
    with pytest.raises(UserError):
        run_stage(ws, "demo", {}, _input(ws), _raises(UserError("no documents kept", hint="add text")), lock="demo")
    (record,) = _records(ws)
    assert record["status"] == "failed" and record["error"] == "no documents kept; add text"
    assert record["outputs"] == [] and not ws.lock_held()


def test_ctrl_c_is_recorded_only_where_asked(ws):
    with pytest.raises(KeyboardInterrupt):
        run_stage(ws, "demo", {}, _input(ws), _raises(KeyboardInterrupt()), lock="demo")
    assert _records(ws) == []  # by default: the previous output stands, nothing to report

    with pytest.raises(KeyboardInterrupt):
        run_stage(ws, "demo", {}, _input(ws), _raises(KeyboardInterrupt()), lock="demo", record_errors=BaseException,
                  interrupted="interrupted (Ctrl-C); continue with --resume auto")
    (record,) = _records(ws)
    assert record["status"] == "failed" and record["error"] == "interrupted (Ctrl-C); continue with --resume auto"
    assert not ws.lock_held()


def test_another_error_is_recorded_with_its_type_where_asked(ws):
    with pytest.raises(RuntimeError):
        run_stage(ws, "demo", {}, _input(ws), _raises(RuntimeError("boom")), lock="demo")
    assert _records(ws) == []
    with pytest.raises(RuntimeError):
        run_stage(ws, "demo", {}, _input(ws), _raises(RuntimeError("boom")), lock="demo", record_errors=BaseException)
    assert _records(ws)[0]["error"] == "RuntimeError: boom"


def test_a_failed_run_is_not_skipped_next_time(ws):
    inputs, calls = _input(ws), []
    run_stage(ws, "demo", {}, inputs, _work(ws, calls), lock="demo")
    with pytest.raises(UserError):
        run_stage(ws, "demo", {}, inputs, _raises(UserError("bad")), lock="demo", may_skip=False)
    # the last successful record still matches: skipping is right, the output is intact
    assert run_stage(ws, "demo", {}, inputs, _work(ws, calls), lock="demo").skipped


def test_refuse_runs_only_when_the_stage_does_not_skip_and_before_the_lock(ws):
    inputs, seen = _input(ws), []

    def refuse():
        seen.append(ws.holder())
        raise UserError("runs/x/ already holds a run with other inputs or options")

    run_stage(ws, "demo", {}, inputs, _work(ws, []), lock="demo")
    assert run_stage(ws, "demo", {}, inputs, _work(ws, []), lock="demo", refuse=refuse).skipped and seen == []
    with pytest.raises(UserError, match="already holds a run"):
        run_stage(ws, "demo", {"k": 2}, inputs, _work(ws, []), lock="demo", refuse=refuse)
    assert seen == [None] and len(_records(ws)) == 1  # refused: no lock taken, no record


def test_last_given_by_the_stage_decides_the_skip(ws):
    inputs = _input(ws)
    first = run_stage(ws, "demo", {}, inputs, _work(ws, []), lock="demo")
    assert not run_stage(ws, "demo", {}, inputs, _work(ws, []), lock="demo", last=None).skipped
    assert run_stage(ws, "demo", {}, inputs, _work(ws, []), lock="demo", last=first.record).skipped


# -- a training run's options (run_setup.stage_options) -------------------------------------------
def _dist(main):
    from types import SimpleNamespace

    return SimpleNamespace(main=main)


def test_a_training_run_refuses_another_runs_checkpoints_records_ctrl_c_and_skips_only_unforced(ws):
    from bigmodel_cli.training.run_setup import stage_options

    folder = ws.root / "runs" / "x"
    (folder / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"runs/x/ already holds a run .*--resume auto.*--force"):
        run_stage(ws, "pretrain:x", {}, _input(ws), _work(ws, []), lock="pretrain --name x",
                  **stage_options(ws, folder, None, False, _dist(True)))
    with pytest.raises(KeyboardInterrupt):
        run_stage(ws, "pretrain:x", {}, _input(ws), _raises(KeyboardInterrupt()), lock="pretrain --name x",
                  **stage_options(ws, folder, "auto", False, _dist(True)))
    assert _records(ws, "pretrain:x")[0]["error"] == "interrupted (Ctrl-C); continue with --resume auto"
    calls = []
    run_stage(ws, "pretrain:x", {}, _input(ws), _work(ws, calls), lock="pretrain --name x",
              **stage_options(ws, folder, None, True, _dist(True)))
    assert run_stage(ws, "pretrain:x", {}, _input(ws), _work(ws, calls), lock="pretrain --name x",
                     **stage_options(ws, folder, None, False, _dist(True))).skipped
    assert not run_stage(ws, "pretrain:x", {}, _input(ws), _work(ws, calls), lock="pretrain --name x",
                         **stage_options(ws, folder, "auto", False, _dist(True))).skipped
    assert len(calls) == 2


def test_a_training_rank_other_than_0_neither_locks_nor_records_its_failure(ws):
    from bigmodel_cli.training.run_setup import stage_options

    folder = ws.root / "runs" / "x"
    with ws.lock("pretrain --name x"):  # rank 0 holds it
        calls = []
        outcome = run_stage(ws, "pretrain:x", {}, _input(ws), _work(ws, calls), lock="pretrain --name x",
                            **stage_options(ws, folder, None, True, _dist(False)))
        assert outcome.record is None and calls[0]["pid"] is not None
        with pytest.raises(RuntimeError):
            run_stage(ws, "pretrain:x", {}, _input(ws), _raises(RuntimeError("boom")), lock="pretrain --name x",
                      **stage_options(ws, folder, None, True, _dist(False)))
    assert _records(ws, "pretrain:x") == []


def test_staged_dir_replaces_the_target_on_success_and_keeps_it_on_ctrl_c(tmp_path):
    from bigmodel_cli.fileio import staged_dir

    target, staging = tmp_path / "out", tmp_path / ".out.staging-1"
    target.mkdir()
    (target / "a.txt").write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(staging, target) as folder:
            (folder / "a.txt").write_text("half", encoding="utf-8")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "a.txt").read_text(encoding="utf-8") == "old"
    staging.mkdir()  # a killed run's leftover under this pid is replaced, not mixed in
    (staging / "stale.txt").write_text("x", encoding="utf-8")
    with staged_dir(staging, target) as folder:
        (folder / "a.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text(encoding="utf-8") == "new"
