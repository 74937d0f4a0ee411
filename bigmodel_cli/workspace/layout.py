"""The project workspace: folder layout, config, lock, and the record of every stage run.

    bigmodel.toml            config (every stage's defaults, commented)
    data/raw/                inputs you drop in (preprocess reads it when given no path)
    data/processed/          train/dev/test.parquet (the store: data/store.py), vocab.txt, report.json, rejects.jsonl
    embeddings/ runs/ reports/ explanations/
    .bigmodel/records/STAGE/RUN_ID.json   one record per stage run
    .bigmodel/lock           held while a stage writes

A record holds the stage's inputs and outputs with content hashes, the resolved
parameters, metrics, timings, library versions and status. `status` compares them with
the disk to say what is stale; a stage whose inputs and parameters match its last
successful record is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

from bigmodel_cli.errors import UserError, WorkspaceBusy
from bigmodel_cli.fileio import (
    pid_alive,
    read_json,
    recover_dir,
    remove_stale,
    sha256_path,
    write_json,
)
from bigmodel_cli.workspace.config import CONFIG_NAME, LANGS, load_config, render_config

LAYOUT = ("data/raw", "data/processed", "embeddings", "runs", "reports", "explanations", ".bigmodel/records")
STAGES = ("preprocess", "embed", "pretrain", "finetune", "evaluate", "explain")
DEFAULT_DATASET = "processed"  # data/processed/: what preprocess writes without --as
RESERVED_DATASETS = {"raw"}  # data/raw/ holds inputs (quickstart's sample)


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    # -- layout -------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    def dataset(self, name: str | None = None) -> Path:
        """The folder of a processed dataset: data/NAME/ (`preprocess --as NAME`), or
        data/processed/ for the default one (no name, or "processed")."""
        if not name or name == DEFAULT_DATASET:
            return self.processed
        return self.root / "data" / check_dataset_name(name)

    def datasets(self) -> list[str]:
        """The names of the processed datasets (folders of data/ with a meta.json), the default first."""
        data = self.root / "data"
        found = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and p.name not in RESERVED_DATASETS and (p / "meta.json").is_file()) if data.is_dir() else []
        return sorted(found, key=lambda n: n != DEFAULT_DATASET)

    def find_dataset(self, name: str | None = None) -> Path:
        """An existing dataset's folder, or a one-line error that lists the datasets there are."""
        folder = self.dataset(name)
        # train.jsonl: the split of a dataset an older version wrote (data/store.py still reads it)
        if (folder / "meta.json").is_file() or any((folder / f"train{s}").is_file() for s in (".parquet", ".jsonl")):
            return folder
        there = self.datasets()
        listed = ", ".join(there) if there else "none yet"
        if name and name != DEFAULT_DATASET:
            raise UserError(f"no dataset '{name}' in {self.relative(self.root / 'data')}/ (datasets: {listed})",
                            hint=f"run `bigmodel preprocess FILE --as {name}` first, or pass one of those")
        raise UserError(f"no processed data in {self.relative(folder)}/ (datasets: {listed})",
                        hint="run `bigmodel preprocess FILE` first" + (", or pass --data NAME" if there else ""))

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def meta(self) -> Path:
        return self.root / ".bigmodel"

    def config(self) -> dict[str, dict[str, Any]]:
        return load_config(self.config_path)

    def config_sections(self, *names: str) -> dict[str, Any]:
        config = self.config()
        return {name: config.get(name, {}) for name in names}

    def relative(self, path: Path | str) -> str:
        """A path as recorded: relative to the workspace when inside it."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def absolute(self, recorded: str) -> Path:
        path = Path(recorded)
        return path if path.is_absolute() else self.root / path

    # -- finding and creating ---------------------------------------------------
    @classmethod
    def find(cls, start: Path | str | None = None) -> "Workspace":
        """The workspace given by `-w`, or the nearest folder upward holding bigmodel.toml."""
        if start is not None:
            root = Path(start)
            if not (root / CONFIG_NAME).is_file():
                raise UserError(f"{root} is not a bigmodel workspace (no {CONFIG_NAME})", hint=f"run `bigmodel init {root}` first")
            return cls(root)
        found = cls.nearest()
        if found is not None:
            return found
        raise UserError(
            f"no bigmodel workspace in {Path.cwd().resolve()} or any folder above it",
            hint="run `bigmodel init DIR` and work inside DIR, or pass --workspace DIR",
        )

    @classmethod
    def nearest(cls) -> "Workspace | None":
        """The nearest folder from the current one upward holding bigmodel.toml, if any."""
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls(folder)
        return None

    @classmethod
    def init(cls, root: Path | str, lang: str = "auto", exist_ok: bool = False,
             values: dict[str, dict[str, Any]] | None = None) -> tuple["Workspace", bool]:
        """Create the layout and config. Returns (workspace, created)."""
        if lang not in LANGS:
            raise UserError(f"--lang must be one of {', '.join(LANGS)}, got '{lang}'")
        ws = cls(Path(root))
        if ws.root.exists() and not ws.root.is_dir():
            raise UserError(f"{ws.root} exists and is not a folder", hint="choose another path")
        created = not ws.config_path.exists()
        for sub in LAYOUT:
            (ws.root / sub).mkdir(parents=True, exist_ok=True)
        if created:
            from bigmodel_cli.fileio import atomic_write

            with atomic_write(ws.config_path) as handle:
                handle.write(render_config(lang, values))
        return ws, created

    # -- lock ---------------------------------------------------------------------
    @property
    def running_path(self) -> Path:
        """Who holds the lock: pid, command, start time (status shows it)."""
        return self.meta / "running.json"

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the workspace for writing; a second writer gets a clear error at once.

        The lock is an flock on `.bigmodel/lock`, which is opened without following links
        and never written. The holder is described in `running.json` beside it. A holder
        that is gone while the flock is still held (its orphaned children inherited the
        descriptor) is taken over, with a notice."""
        self.meta.mkdir(parents=True, exist_ok=True)
        fd = self._acquire_lock()
        try:
            write_json(self.running_path, {"pid": os.getpid(), "command": command,
                                           "since": dt.datetime.now().isoformat(timespec="seconds")})
            for name in {DEFAULT_DATASET, *self.datasets()}:
                recover_dir(self.dataset(name))
            remove_stale(self.processed.parent, ".*.staging-*", r"\.[A-Za-z0-9][A-Za-z0-9_.-]*\.staging-(\d+)")
            yield
        finally:
            holder = self.holder()
            if holder is not None and holder.get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    self.running_path.unlink()
            os.close(fd)  # closing releases the lock

    def holder(self) -> dict[str, Any] | None:
        """The last recorded holder of the lock (it may be gone), or None."""
        try:
            holder = read_json(self.running_path)
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    def lock_held(self) -> bool:
        """Whether some process holds the lock now (taken for an instant to find out)."""
        path = self.meta / "lock"
        if not path.exists():
            return False
        fd = _open_lock(path)
        try:
            _try_lock(fd)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def _acquire_lock(self) -> int:
        path = self.meta / "lock"
        fd = _open_lock(path)
        try:
            _try_lock(fd)
            return fd
        except OSError:
            os.close(fd)
        holder = self.holder()
        if holder is not None and not pid_alive(holder["pid"]):
            return self._take_over(path, holder)
        described = (f"pid {holder['pid']} is running `bigmodel {holder.get('command', '?')}` since {holder.get('since', '?')}"
                     if holder else "another process holds its lock")
        raise WorkspaceBusy(f"workspace {self.root} is busy: {described}",
                            hint="wait for it to finish (or stop it) and run this command again")

    def _take_over(self, path: Path, holder: dict[str, Any]) -> int:
        """Put a fresh, already locked lock file in place of one whose holder is gone.

        The new file is locked before it is renamed into place, so nobody else can lock it
        first; a second process taking over at the same moment finds the lock held by a
        live process and is told the workspace is busy."""
        fresh = path.with_name(f".lock.{os.getpid()}.tmp")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            _try_lock(fd)
            current = self.holder()
            if current is not None and current["pid"] != holder["pid"] and pid_alive(current["pid"]):
                raise WorkspaceBusy(f"workspace {self.root} is busy: pid {current['pid']} is running "
                                    f"`bigmodel {current.get('command', '?')}`",
                                    hint="wait for it to finish (or stop it) and run this command again")
            os.replace(fresh, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                fresh.unlink()
            raise
        sys.stderr.write(f"notice: took over the workspace lock from pid {holder['pid']} "
                         f"(`bigmodel {_printable(holder.get('command', '?'))}`), which is no longer running\n")
        return fd

    # -- records ------------------------------------------------------------------
    def records_dir(self, stage: str) -> Path:
        return self.meta / "records" / stage.replace(":", "/")

    def records(self, stage: str) -> list[dict[str, Any]]:
        folder = self.records_dir(stage)
        if not folder.is_dir():
            return []
        return [read_json(p) for p in sorted(folder.glob("*.json"))]

    def last_record(self, stage: str, status: str | None = "ok") -> dict[str, Any] | None:
        for record in reversed(self.records(stage)):
            if status is None or record.get("status") == status:
                return record
        return None

    def stage_keys(self) -> list[str]:
        """Stages that have records, in pipeline order (named runs such as embed:w2v too)."""
        root = self.meta / "records"
        keys = []
        for stage in STAGES:
            folder = root / stage
            if not folder.is_dir():
                continue
            if any(folder.glob("*.json")):
                keys.append(stage)
            keys += [f"{stage}:{sub.name}" for sub in sorted(folder.iterdir()) if sub.is_dir()]
        return keys

    def hash_paths(self, paths: list[Path], known: dict[Path, str] | None = None) -> list[dict[str, str]]:
        """{path, sha256} per path; `known` holds hashes the caller has already taken."""
        known = known or {}
        return [{"path": self.relative(p), "sha256": known.get(p) or sha256_path(p)} for p in paths]


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_lock(path: Path) -> int:
    """Open the lock file without following a link, creating it if need be; refuse anything
    but a plain file with one name (writing through a link or a hard link would reach a
    file outside the workspace)."""
    flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise UserError(f"{path} is a symbolic link; bigmodel does not lock through links",
                            hint=f"remove it (rm {path}) and run the command again") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{path} is not a plain file of its own (a folder, device or hard link)",
                        hint=f"remove it (rm {path}) and run the command again")
    return fd


def _try_lock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _printable(text: object) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_dataset_name(name: str) -> str:
    if name in RESERVED_DATASETS or not NAME_RE.match(name):
        raise UserError(f"a dataset name must be letters, digits, '_', '.' or '-' (at most 64, not starting with "
                        f"'.' '_' '-') and not {', '.join(sorted(RESERVED_DATASETS))}, got '{_printable(name)}'")
    return name


def dataset_stage(name: str | None) -> str:
    """The record key of preprocess into a dataset: `preprocess`, or `preprocess:NAME`."""
    return "preprocess" if not name or name == DEFAULT_DATASET else f"preprocess:{name}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"--name must be letters, digits, '_', '.' or '-' (at most 64, not starting with '.' '_' '-'), got '{name}'")
    return name
