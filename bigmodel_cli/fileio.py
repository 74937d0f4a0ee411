"""Small file helpers: atomic writes, content hashes, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`, replacing what was there.

    Two renames: the old folder is moved aside first, so a crash in between leaves
    `target.old`, which `recover_dir` puts back.
    """
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(target: Path) -> None:
    """Undo a `replace_dir` that was interrupted between its two renames."""
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        os.replace(old, target)
