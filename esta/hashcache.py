"""sha256 of the files a palette reads, cached per user (spec §12 "every file read is under a sha256
record"; issue 30).

Checking a Stitched LLaMA palette's anchors means reading ~40 GB at LLaMA-7B/13B, on every load. A
file's digest is therefore kept in a per-user cache file (``$XDG_CACHE_HOME/esta/sha256.json``, else
``~/.cache/esta/sha256.json``), keyed by its resolved path and what the file system says of it: size,
``mtime_ns``, ``ctime_ns`` and inode. Any write to the file changes ``ctime_ns``, which, unlike
``mtime_ns``, no user can set back, so a file edited in place or replaced under the same name is
hashed again; ``verify=True`` re-hashes regardless (``python -m esta ... --verify``). The cache file is
written atomically and only ever holds digests this user computed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from esta import runtime

__all__ = ["sha256", "cache_path"]

log = logging.getLogger(__name__)
_VERSION = 1


def cache_path() -> Path:
    """The per-user cache file (XDG base directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "esta" / "sha256.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read(cache: Path) -> dict:
    if not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError) as err:
        log.warning("hash cache %s is unreadable (%s): starting a new one", cache, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("files"), dict):
        log.warning("hash cache %s has another layout: starting a new one", cache)
        return {}
    return data["files"]


def _write(cache: Path, files: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(version=_VERSION, files=files)))
    os.replace(tmp, cache)


def sha256(path: str | Path, verify: bool = False, cache: Path | None = None) -> str:
    """The sha256 of ``path``'s bytes: from the cache when the file's (size, mtime_ns, ctime_ns,
    inode) are those it was hashed at, else (and always with ``verify``) hashed and recorded."""
    path = Path(path).resolve()
    cache = cache_path() if cache is None else cache
    files = _read(cache)
    key = _stat_key(path)
    hit = files.get(str(path))
    if not verify and hit is not None and hit.get("stat") == key:
        return hit["sha256"]
    digest = runtime.file_digest(path)
    if _stat_key(path) != key:
        raise OSError(f"{path} changed while it was being hashed")
    files[str(path)] = dict(stat=key, sha256=digest)
    _write(cache, files)
    return digest
