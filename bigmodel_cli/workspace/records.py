"""The record of every stage run: StageRun writes one JSON record per run (inputs and outputs
with sha256, parameters, metrics, timings, library versions); run_stage() is the skeleton
every stage runs in (skip when unchanged, lock, record, failed record); unchanged() says
whether a stage may skip; stage_status() what `bigmodel status` shows."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_cli import __version__
from bigmodel_cli.errors import UserError
from bigmodel_cli.fileio import pid_alive, sha256_path, write_json
from bigmodel_cli.workspace.config import CONFIG_NAME
from bigmodel_cli.workspace.layout import STAGES, Workspace


@dataclass
class StageRun:
    """Collects one stage run's record; `finish` writes it atomically."""

    ws: Workspace
    stage: str
    params: dict[str, Any]
    inputs: list[dict[str, str]]
    # Microseconds keep ids (and so record files) in run order when runs start in the same second.
    run_id: str = field(default_factory=lambda: dt.datetime.now().strftime("%Y%m%dT%H%M%S-%f") + "-" + secrets.token_hex(3))
    started: float = field(default_factory=time.time)
    # The sections of bigmodel.toml that shape this stage (its own and [project]), as
    # they were: `status` reports the stage stale when they change.
    config: dict[str, Any] | None = None

    def finish(self, outputs: list[Path], metrics: dict[str, Any], status: str = "ok",
               extra: dict[str, Any] | None = None, known_hashes: dict[Path, str] | None = None) -> dict[str, Any]:
        ended = time.time()
        record = {
            "stage": self.stage,
            "run_id": self.run_id,
            "status": status,
            "started": dt.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "seconds": round(ended - self.started, 3),
            "inputs": self.inputs,
            "params": self.params,
            "config": self.config,
            "outputs": self.ws.hash_paths(outputs, known_hashes) if status == "ok" else [],
            "metrics": metrics,
            "versions": library_versions(),
            "command": " ".join(["bigmodel", *sys.argv[1:]]) if sys.argv and "bigmodel" in sys.argv[0] else None,
        }
        if extra:
            record.update(extra)
        write_json(self.ws.records_dir(self.stage) / f"{self.run_id}.json", record)
        return record



# -- the skeleton every stage runs in ----------------------------------------------------------
@dataclass
class Done:
    """What a stage's work hands back: its value, and what its record holds (the outputs are
    hashed when the record is written; `known_hashes` are those the work already took)."""

    value: Any
    outputs: list[Path]
    metrics: dict[str, Any]
    known_hashes: dict[Path, str] | None = None
    extra: dict[str, Any] | None = None


@dataclass
class Outcome:
    """A stage run: skipped (then `record` is the last successful one and `value` None) or done."""

    skipped: bool
    record: dict[str, Any] | None
    value: Any = None


_LAST = object()  # run_stage's `last` when not given: the stage's last successful record


def skip_record(ws: Workspace, stage: str, params: dict[str, Any], inputs: list[dict[str, str]],
                last: Any = _LAST) -> dict[str, Any] | None:
    """The last successful record of `stage` when the stage may skip (see unchanged), else None."""
    last = ws.last_record(stage) if last is _LAST else last
    return last if unchanged(ws, last, params, inputs) else None


def run_stage(ws: Workspace, stage: str, params: dict[str, Any], inputs: list[dict[str, str]],
              work: Callable[[], Done], *, lock: str | None, sections: tuple[str, ...] | None = None,
              may_skip: bool = True, last: Any = _LAST, refuse: Callable[[], None] | None = None, main: bool = True,
              record_errors: type[BaseException] | tuple[type[BaseException], ...] = UserError,
              interrupted: str = "interrupted (Ctrl-C)") -> Outcome:
    """One stage run. Skip (without the lock) when `may_skip` and the parameters and input
    hashes match the last successful record (`last`, when the stage picks it itself); else
    call `refuse` (it raises to refuse the run), take the workspace lock as `lock` (the
    command `status` shows), run `work` and write its record with the outputs hashed.

    A failure of a type in `record_errors` leaves a failed record with its one-line error
    (`interrupted` for Ctrl-C), so that `status` says so; by default only a user's mistake
    does, since a Ctrl-C of a stage that keeps its previous output leaves nothing to report.
    `sections`: the bigmodel.toml sections saved in the record (see StageRun.config).
    `main`: False in a torchrun rank other than 0, which neither locks nor records."""
    if may_skip:
        skipped = skip_record(ws, stage, params, inputs, last)
        if skipped is not None:
            return Outcome(True, skipped)
    if refuse is not None:
        refuse()
    with ws.lock(lock) if main and lock else contextlib.nullcontext():
        run = StageRun(ws, stage, params, inputs, config=ws.config_sections(*sections) if sections else None)
        try:
            done = work()
        except record_errors as exc:
            if main:
                with contextlib.suppress(Exception):  # the original error matters more than the record
                    run.finish([], {}, status="failed", extra={"error": failure_line(exc, interrupted)})
            raise
        record = run.finish(done.outputs, done.metrics, known_hashes=done.known_hashes, extra=done.extra) if main else None
    return Outcome(False, record, done.value)


def failure_line(exc: BaseException, interrupted: str = "interrupted (Ctrl-C)") -> str:
    """The `error` of a failed record: a user's mistake as its one line, Ctrl-C as `interrupted`."""
    if isinstance(exc, UserError):
        return exc.one_line()
    if isinstance(exc, KeyboardInterrupt):
        return interrupted
    return f"{type(exc).__name__}: {exc}"


RECORDED_LIBRARIES = ("torch", "jieba", "jieba_next", "nltk", "gensim", "scikit-learn", "numpy", "charset-normalizer")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bigmodel": __version__}
    installed = _dist_info_versions()
    for name in RECORDED_LIBRARIES:
        version = installed.get(_canonical(name))
        if version is None:  # not installed as a wheel (an egg, a zip): ask importlib.metadata
            from importlib import metadata

            with contextlib.suppress(metadata.PackageNotFoundError):
                version = metadata.version(name)
        if version is not None:
            versions[name] = version
    return versions


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _dist_info_versions() -> dict[str, str]:
    """Installed distributions' versions, read from their `NAME-VERSION.dist-info` folder
    names (as a wheel install names them) in sys.path order, as importlib.metadata finds
    them: one listing per folder, where asking importlib.metadata parses a METADATA
    file per package at the end of every stage."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            with os.scandir(folder or ".") as entries:
                for entry in entries:
                    if entry.name.endswith(".dist-info"):
                        name, _, version = entry.name[: -len(".dist-info")].partition("-")
                        if version:
                            found.setdefault(_canonical(name), version)
        except OSError:
            continue
    return found


def unchanged(ws: Workspace, record: dict[str, Any] | None, params: dict[str, Any], inputs: list[dict[str, str]]) -> bool:
    """Whether a stage may skip: same parameters and input hashes as its last successful
    record, and that record's outputs and config intact. The caller has just hashed the
    inputs, so they are compared, not read again."""
    return (record is not None and record["params"] == params and record["inputs"] == inputs
            and not stale_reasons(ws, record, check_inputs=False))


def stale_reasons(ws: Workspace, record: dict[str, Any], check_inputs: bool = True) -> list[str]:
    """Why a stage's last successful run no longer matches the disk (empty: up to date)."""
    reasons = []
    for item in record.get("inputs", []) if check_inputs else []:
        path = ws.absolute(item["path"])
        if not path.exists():
            reasons.append(f"input {item['path']} is gone")
        elif sha256_path(path) != item["sha256"]:
            reasons.append(f"input {item['path']} changed")
    for item in record.get("outputs", []):
        path = ws.absolute(item["path"])
        if not path.exists():
            reasons.append(f"output {item['path']} is missing")
        elif sha256_path(path) != item["sha256"]:
            reasons.append(f"output {item['path']} was changed or rewritten")
    config = ws.config()
    for name, section in (record.get("config") or {}).items():
        if json.dumps(config.get(name, {}), sort_keys=True) != json.dumps(section, sort_keys=True):
            reasons.append(f"[{name}] in {CONFIG_NAME} changed")
    return reasons


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in list(metrics.items())[:4]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, int):
            value = f"{value:,}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def stage_status(ws: Workspace) -> list[dict[str, Any]]:
    """One row per pipeline stage (and per named run such as embed:w2v)."""
    ws.config()  # a broken bigmodel.toml is reported here too, not only by the next stage
    keys = ws.stage_keys()
    rows = []
    for stage in STAGES:
        own = [k for k in keys if k == stage or k.startswith(stage + ":")]
        for key in own or [stage]:
            latest = ws.last_record(key, status=None)
            ok = ws.last_record(key)
            row = {"stage": key, "when": None, "status": None, "metrics": "", "state": "never run", "reasons": [],
                   "lineage": _lineage(ok or latest)}
            if latest is not None:
                row.update(when=latest["started"].replace("T", " "), status=latest["status"])
            if latest is not None and latest["status"] != "ok":
                row.update(state="failed", reasons=[latest.get("error", "")])
            elif ok is not None:
                reasons = stale_reasons(ws, ok)
                row.update(metrics=_format_metrics(ok.get("metrics", {})),
                           state="stale" if reasons else "up to date", reasons=reasons)
            rows.append(row)
    _mark_running(ws, rows)
    return rows


def _lineage(record: dict[str, Any] | None) -> str:
    """Which dataset a run read and which run it started from: `data corpus`, `from mlm`."""
    if record is None:
        return ""
    params = record.get("params", {})
    parts = []
    if params.get("data"):
        parts.append(f"data {params['data']}")
    if params.get("base"):
        parts.append(f"from {params['base']}")
    elif params.get("run") and record.get("stage", "").split(":")[0] in ("evaluate", "explain"):
        parts.append(f"run {params['run']}")
    return ", ".join(parts)


def _stage_key(command: str) -> str:
    """The record key of a locked command: `pretrain --name mlm` -> pretrain:mlm,
    `evaluate classifier --split test` -> evaluate:classifier, `preprocess` -> preprocess."""
    words = command.split()
    if not words:
        return "?"
    for flag in ("--name", "--as"):
        if flag in words[:-1]:
            return f"{words[0]}:{words[words.index(flag) + 1]}"
    if len(words) > 1 and not words[1].startswith("-"):
        return f"{words[0]}:{words[1]}"
    return words[0]


def _mark_running(ws: Workspace, rows: list[dict[str, Any]]) -> None:
    """Show the stage that holds the lock as running, or one whose process died holding it
    (killed: no record was written) as interrupted."""
    holder = ws.holder()
    if holder is None:
        return
    alive = pid_alive(holder["pid"]) and ws.lock_held()
    key = _stage_key(str(holder.get("command", "")))
    row = next((r for r in rows if r["stage"] == key), None)
    if row is None:
        row = {"stage": key, "when": None, "status": None, "metrics": "", "reasons": []}
        rows.append(row)
    command = f"`bigmodel {holder.get('command', '?')}`"
    if alive:
        row.update(state="running", reasons=[f"pid {holder['pid']}, since {holder.get('since', '?')}: {command}"])
    else:
        row.update(state="interrupted", reasons=[f"pid {holder['pid']} stopped without finishing {command} "
                                                 f"(started {holder.get('since', '?')}); run it again"])
