"""Driver of ``jobs.import_checkpoint``: fetch the release, fingerprint it, convert it, log it.

Each release format is a detector's importer in the registry (``convert(source: Path, out: str, storage) -> dict``);
this module is the same for all of them.
A folder's fingerprint is the sha256 of its sorted ``name  sha256(file)`` lines, so it does not
depend on where the folder was copied to.
"""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import ImportConfig
from pipeline.detectors.registry import DETECTORS, load_attr
from pipeline.errors import ConfigError, SetupError
from pipeline.io.storage import Storage
from pipeline.tracking import check_tracking, start_run


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_sha256(path: Path) -> str:
    """``sha256:`` of a file, or of a folder's ``relative/name  sha256`` lines in name order."""
    if path.is_file():
        return "sha256:" + _sha256_file(path)
    lines = [f"{p.relative_to(path).as_posix()}  {_sha256_file(p)}\n"
             for p in sorted(path.rglob("*")) if p.is_file()]
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def fetch_source(storage: Storage, uri: str, workdir: Path) -> Path:
    """A local path to the release: the path itself, or a copy of the remote file or folder under ``workdir``."""
    storage.check_reachable(uri, "source")
    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://"))
    files = storage.list_files(uri)
    root = uri.rstrip("/")
    if files == [uri]:  # a single file
        local = workdir / posixpath.basename(root)
        local.write_bytes(storage.read_bytes(uri))
        return local
    local = workdir / posixpath.basename(root)
    for remote in files:
        relative = posixpath.relpath(remote, storage.canonical(root))
        if relative.startswith("..") or posixpath.isabs(relative):
            raise SetupError(f"source={uri}: listed file {remote} lies outside the source folder")
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(remote))
    return local


def run_import(cfg: ImportConfig) -> dict[str, Any]:
    storage = Storage(cfg.storage)
    tracking_uri = check_tracking(cfg.tracking)
    importer = DETECTORS[cfg.format].importer
    with tempfile.TemporaryDirectory(prefix="import-") as tmp:
        source = fetch_source(storage, cfg.source, Path(tmp))
        sha = source_sha256(source)
        options = {"trust_pickle": cfg.trust_pickle} if importer.runs_pickle else {}
        try:
            applied = load_attr(importer.convert)(source, cfg.out, storage, **options)
        except ValueError as exc:  # the importers' refusals: something about the release, not a bug here
            raise ConfigError(f"--source {cfg.source}: {exc}") from exc
    summary = {"format": cfg.format, "source": cfg.source, "source_sha256": sha, "out": cfg.out,
               "applied": applied}
    with start_run(cfg.tracking, f"import-{cfg.format}", "import_checkpoint") as run:
        run.params({"format": cfg.format, "source": cfg.source, "source_sha256": sha, "out": cfg.out})
        run.json_artifact("import.json", summary)
        summary["mlflow_run_id"] = run.run_id
        summary["tracking_uri"] = tracking_uri
    return summary
