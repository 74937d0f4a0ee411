"""Small file helpers: atomic writes, content hashes, JSON."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_in_background(paths: list[Path]) -> Callable[[], dict[Path, str]]:
    """Start hashing finished files on a thread; the function returned waits for it and
    gives {path: sha256}. hashlib and file reads release the GIL, so the hashing runs on
    another core beside the caller's own work. A file that fails is left out (hashing
    it again later shows the error where it belongs)."""
    hashes: dict[Path, str] = {}

    def work() -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                hashes[path] = sha256_file(path)

    thread = threading.Thread(target=work, name="sha256", daemon=True)
    thread.start()

    def wait() -> dict[Path, str]:
        thread.join()
        return hashes
    return wait


def sha256_path(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's files (names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(sha256_file(child).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside `path`, then rename it over `path`.

    A reader never sees a half-written file: it sees the old one or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets a later write tell a leftover of a killed process from a
    # file another live process is writing.
    remove_stale(path.parent, f".{glob.escape(path.name)}.*.tmp", rf"\.{re.escape(path.name)}\.(\d+)-[^.]+\.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; give it the mode open() would have, so a colleague can
    # read what the tool wrote.
    os.fchmod(fd, 0o666 & ~current_umask())
    if "b" in mode:
        encoding = None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a failed write or fsync names no file; the user needs to know which
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale(folder: Path, pattern: str, name_re: str) -> list[Path]:
    """Remove the leftovers of killed runs in `folder`: entries matching the glob `pattern`
    whose whole name matches `name_re`, a name this tool gives, with the writer's pid as its
    first group, when that process is gone. Returns what was removed."""
    removed = []
    for path in Path(folder).glob(pattern):
        match = re.fullmatch(name_re, path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _aside(target: Path) -> Path:
    """Where `replace_dir` parks the folder it replaces: a name only this tool gives."""
    return target.with_name(f".{target.name}.replaced-{os.getpid()}")


def replace_dir(staging: Path, target: Path, keep: Callable[[str], bool] | None = None) -> None:
    """Move a fully written `staging` folder to `target`, replacing what was there.

    Two renames: the old folder is moved aside first, so a crash in between leaves it
    parked under a hidden name, which `recover_dir` puts back. Only that parked folder is
    ever removed, never a sibling the user made. `keep(name)`: the old folder's entries
    that are not the tool's own (a user's file dropped in beside the outputs) move into the
    new folder, unless it has one of that name, instead of being removed with the rest.
    """
    old = _aside(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        if keep is not None:
            for entry in old.iterdir():
                if keep(entry.name) and not (target / entry.name).exists():
                    os.replace(entry, target / entry.name)
        shutil.rmtree(old)


@contextlib.contextmanager
def staged_dir(staging: Path, target: Path, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A folder written at `staging` (a name this process alone uses) that replaces `target`
    when the block ends without error; on any error, Ctrl-C included, it is removed and
    `target` stays as it was."""
    if staging.exists():  # left by a killed run whose pid this process now has
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_dir(staging, target, keep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def recover_dir(target: Path) -> None:
    """Undo a `replace_dir` that was interrupted between its two renames; remove the parked
    old folder of one interrupted after them."""
    pattern, name_re = f".{glob.escape(target.name)}.replaced-*", rf"\.{re.escape(target.name)}\.replaced-(\d+)"
    if not target.exists():
        parked = sorted((p for p in target.parent.glob(pattern) if re.fullmatch(name_re, p.name)),
                        key=lambda p: p.stat().st_mtime)
        legacy = target.with_name(target.name + ".old")  # where earlier versions parked it
        if parked:
            os.replace(parked[-1], target)
        elif legacy.is_dir():
            os.replace(legacy, target)
    if target.exists():
        remove_stale(target.parent, pattern, name_re)


# JSON leaves DEL and the C1 controls (U+0080-U+009F) unescaped; some terminals act on them
# (U+009B starts a control sequence), so the output escapes them as well.
_UNESCAPED_CONTROLS = re.compile("[\x7f-\x9f]")


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line, with DEL and C1 controls escaped as well."""
    line = json.dumps(record, ensure_ascii=False)
    if not line.isascii():
        line = _UNESCAPED_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line + "\n"
