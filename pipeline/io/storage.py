"""One way to reach local paths, ``file://`` and ``s3://`` URIs (fsspec underneath).

Writes are atomic: a reader sees the old object or the new one, never half of one. On a
local disk that is a temporary file and ``os.replace``; an S3 PUT is atomic by itself.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.config import StorageSettings


class StorageError(RuntimeError):
    """Storage cannot be reached or an object is missing; the message names the URI/setting."""


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of ``base``."""
    return posixpath.join(base.rstrip("/"), *parts)


@dataclass(frozen=True)
class Storage:
    """A filesystem for one URI scheme, built from picklable settings (ships to Ray workers)."""

    settings: StorageSettings

    def _fs_for(self, uri: str) -> tuple[Any, str]:
        if uri.startswith("s3://"):
            s = self.settings
            fs = fsspec.filesystem(
                "s3",
                key=s.key,
                secret=s.secret,
                client_kwargs={k: v for k, v in {"endpoint_url": s.endpoint_url, "region_name": s.region}.items()
                               if v},
                config_kwargs={
                    "connect_timeout": s.connect_timeout_s,
                    "read_timeout": max(30.0, s.connect_timeout_s),
                    "retries": {"max_attempts": s.max_attempts, "mode": "standard"},
                },
                skip_instance_cache=False,
            )
            return fs, uri[len("s3://"):]
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        elif "://" in uri:
            raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
        return fsspec.filesystem("file"), os.path.abspath(uri)

    def canonical(self, uri: str) -> str:
        """The form :meth:`list_files` reports ``uri`` in (absolute local path, or ``s3://...``)."""
        return uri.rstrip("/") if self.is_remote(uri) else self._fs_for(uri)[1].rstrip("/")

    def is_remote(self, uri: str) -> bool:
        return uri.startswith("s3://")

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_for(uri)
        return self._call(uri, fs.exists, path)

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self._fs_for(uri)
        return self._call(uri, fs.cat_file, path)

    def open_read(self, uri: str):
        fs, path = self._fs_for(uri)
        return self._call(uri, fs.open, path, "rb")

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self._fs_for(uri)
        if self.is_remote(uri):
            self._call(uri, fs.pipe_file, path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{uuid.uuid4().hex[:8]}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def list_files(self, uri: str) -> list[str]:
        """All files under ``uri`` (recursive), as URIs of the same scheme, sorted."""
        fs, path = self._fs_for(uri)
        if not self._call(uri, fs.exists, path):
            raise StorageError(f"{uri}: no such file, folder or prefix")
        if not self._call(uri, fs.isdir, path):
            return [uri]
        found = self._call(uri, fs.find, path)
        prefix = "s3://" if self.is_remote(uri) else ""
        return sorted(prefix + p for p in found)

    def check_reachable(self, uri: str, setting: str) -> None:
        """Fail fast, naming ``setting``, when the storage behind ``uri`` does not answer."""
        fs, path = self._fs_for(uri)
        try:
            if self.is_remote(uri):
                bucket = path.split("/", 1)[0]
                fs.ls(bucket, refresh=True)
            else:
                parent = path
                while not os.path.exists(parent):
                    parent = os.path.dirname(parent)
                if not os.access(parent, os.W_OK | os.R_OK):
                    raise PermissionError(f"no read/write access to {parent}")
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot use this storage"
            where = f" (storage.endpoint_url={self.settings.endpoint_url})" if self.is_remote(uri) else ""
            raise StorageError(f"{setting}={uri}: storage unreachable{where}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _call(uri: str, fn, *args):
        try:
            return fn(*args)
        except FileNotFoundError as exc:
            raise StorageError(f"{uri}: not found") from exc
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"{uri}: {type(exc).__name__}: {exc}") from exc
