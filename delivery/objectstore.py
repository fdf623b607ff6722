"""Where the archive, the reports and the Data Docs live: a local folder or object storage.

`AMS_OBJECT_STORE_URL` names the root (`file:///srv/ams`, `s3://bucket/prefix`, `memory://ams` in tests);
unset, it is AMS_HOME, so a single machine keeps today's folders. Plain code works on the path API that
`pathlib.Path`, universal_pathlib's `UPath` and Airflow's `ObjectStoragePath` share (`/`, read_bytes,
write_bytes, mkdir, exists, is_dir, is_file, iterdir, glob, name, parent). Inside Airflow the root is an
`ObjectStoragePath` built by plugins/ams_reporting/hooks.py with the credentials of the connection named
by `AMS_OBJECT_STORE_CONN_ID`; no Airflow import here.

Object stores are not file systems: a `write_bytes` is atomic per object (no rename needed), a "folder"
is a key prefix (mkdir may do nothing), and a tree is removed with the file system's recursive rm.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: A folder of the store: pathlib.Path (local), upath.UPath or airflow.sdk.ObjectStoragePath.
StorePath = Any

OBJECT_STORE_URL_ENV = "AMS_OBJECT_STORE_URL"
OBJECT_STORE_CONN_ENV = "AMS_OBJECT_STORE_CONN_ID"


def store_root(home: Path, url: str | None = None) -> StorePath:
    """The store's root: `url` (default AMS_OBJECT_STORE_URL) as a UPath, else the local `home`."""
    url = url if url is not None else os.environ.get(OBJECT_STORE_URL_ENV, "")
    if not url:
        return Path(home)
    if "://" not in url:
        return Path(url)
    from upath import UPath

    return UPath(url)


def is_local(path: StorePath) -> bool:
    """A plain local path (rename and shutil work on it)."""
    return isinstance(path, Path)


def write_atomic(path: StorePath, blob: bytes) -> None:
    """Write `blob` so that no reader sees half of it: a rename on a local disk; on an object store a
    put is atomic already."""
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        return
    _mkdir(path.parent)
    path.write_bytes(blob)


def ensure_folder(path: StorePath) -> None:
    """The folder exists (a local directory; on an object store a prefix needs nothing)."""
    _mkdir(path)


def _mkdir(path: StorePath) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotImplementedError):  # a prefix on an object store needs no folder
        pass


def remove_tree(path: StorePath) -> None:
    if is_local(path):
        shutil.rmtree(path)
        return
    path.fs.rm(path.path, recursive=True)


def copy_tree(source: Path, target: StorePath) -> int:
    """Copy a local folder's files into the store (replacing what is there); returns the files copied.
    Used for the Data Docs, which Great Expectations can only write to a local folder."""
    if is_local(target) and Path(target).resolve() == Path(source).resolve():
        return 0
    count = 0
    for root, _dirs, files in os.walk(source):
        rel = Path(root).relative_to(source)
        folder = target
        for part in rel.parts:
            folder = folder / part
        for name in files:
            write_atomic(folder / name, (Path(root) / name).read_bytes())
            count += 1
    return count


def tail(path: str, parts: int) -> list[str]:
    """The last `parts` names of a stored path string, whatever its scheme (file path or URL)."""
    return [p for p in str(path).replace("\\", "/").split("/") if p][-parts:]
