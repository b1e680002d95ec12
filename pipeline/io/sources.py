"""List an input URI and cut it into deterministic work units.

A work unit is the unit of scheduling, retry, output and resume. Loose files (images, and the
files that are not inputs, which get a "skipped" row) go to ``hash(uri) % n_buckets`` buckets
(stable across runs: the bucket count is stored in the run manifest); each ``.tar`` shard is one
unit of its own and is streamed member by member, so nothing is ever extracted to disk and a
member's name can never escape anywhere; a video is cut into frame-range units so one long video
spreads over workers.

Results are never inputs: :func:`list_inputs` leaves out the job's own output prefix and every
folder this product wrote (a run folder: ``run.json`` beside ``scores/`` or ``_markers/``; a bank
root: ``latest.json`` beside ``vNNNN/bank.json``), so an output prefix inside the input prefix
does not grow the next run with its own heatmaps and Parquet parts.

File names that are not valid UTF-8 reach Python as surrogate escapes; they are hashed and opened
by their bytes, and rows carry them as :func:`printable_name` (``caf\\xe9.png``).

Per-input problems (missing, unreadable, too large) become items with an error; a
:class:`TransientStorageError` (storage down, not the input) propagates, failing the whole unit
so it gets no completion marker and a re-run retries it.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.config import DecodeSettings, VideoSettings
from pipeline.errors import StorageError, TransientStorageError, VideoError
from pipeline.io.prefetch import ordered_map
from pipeline.io.storage import Storage
from pipeline.io.video import VideoInfo, frame_ranges, is_video, probe, stride_for

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")


def name_bytes(text: str) -> bytes:
    """The bytes of a name as the filesystem gave them (a non-UTF-8 name's bytes survive as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def printable_name(text: str) -> str:
    """``text`` as valid UTF-8: unchanged for a valid name, each undecodable byte written ``\\xNN``
    (``b'caf\\xe9.png'`` -> ``caf\\xe9.png``), so Parquet and JSON hold the name without losing a byte."""
    return name_bytes(text).decode("utf-8", "backslashreplace")


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(name_bytes(text)).digest()[:8], "big")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


@dataclass(frozen=True)
class Listing:
    images: list[str]
    tars: list[str]
    skipped: list[str]  # files that are neither images, tar shards nor videos
    videos: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # output and product folders not listed (see list_inputs)
    n_left_out: int = 0  # files under them


RUN_FOLDER_PARTS = ("scores", "_markers")  # beside run.json: a run folder (pipeline/results layout)
BANK_VERSION = re.compile(r"v\d{4,}")  # beside latest.json, holding bank.json: a bank root


def _is_run_folder(folder: str, names: set[str], by_parent: dict[str, set[str]]) -> bool:
    return "run.json" in names and any(posixpath.join(folder, p) in by_parent for p in RUN_FOLDER_PARTS)


def _is_bank_root(folder: str, names: set[str], by_parent: dict[str, set[str]]) -> bool:
    return "latest.json" in names and any(
        posixpath.dirname(sub) == folder and BANK_VERSION.fullmatch(posixpath.basename(sub)) and "bank.json" in held
        for sub, held in by_parent.items())


def product_folders(paths: list[str]) -> set[str]:
    """Folders among ``paths``' ancestors that hold a run or a bank this product wrote."""
    by_parent: dict[str, set[str]] = {}
    for path in paths:
        parent, name = posixpath.split(path)
        by_parent.setdefault(parent, set()).add(name)
    return {folder for folder, names in by_parent.items()
            if _is_run_folder(folder, names, by_parent) or _is_bank_root(folder, names, by_parent)}


def _under(path: str, folders: set[str]) -> bool:
    parent = posixpath.dirname(path)
    while parent not in folders:
        up = posixpath.dirname(parent)
        if up == parent:
            return False
        parent = up
    return True


def list_inputs(storage: Storage, uri: str, exclude: tuple[str, ...] = ()) -> Listing:
    """The files under ``uri`` by kind, leaving out the folders in ``exclude`` (the job's output) and
    every run or bank folder this product wrote (see the module docstring): ``Listing.left_out``."""
    images, tars, skipped, videos = [], [], [], []
    files = storage.list_files(uri)
    outside = {storage.canonical(e) for e in exclude} | product_folders(files)
    kept = [f for f in files if not _under(f, outside)]
    for path in kept:
        base = posixpath.basename(path)
        if base.startswith((".", "_")):
            continue
        if is_image(base):
            images.append(path)
        elif is_tar(base):
            tars.append(path)
        elif is_video(base):
            videos.append(path)
        else:
            skipped.append(path)
    held = {f for f in outside if any(_under(p, {f}) for p in files)}
    left_out = sorted(f for f in held if not _under(f, held))  # the outermost: results/ holds its run folders
    return Listing(images, tars, skipped, videos, left_out=left_out, n_left_out=len(files) - len(kept))


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str
    files: tuple[str, ...] = ()
    tar: str | None = None
    video: str | None = None
    frame_start: int = 0
    frame_end: int | None = None  # None: to the end of the video
    frame_stride: int = 1

    def fingerprint(self) -> str:
        """Identifies the unit's inputs: a completed unit is skipped only if this still matches."""
        if self.video:
            text = f"{self.video}\0{self.frame_start}\0{self.frame_end}\0{self.frame_stride}"
        else:
            text = self.tar if self.tar else "\n".join(self.files)
        return hashlib.sha1(name_bytes(text)).hexdigest()


def plan_units(listing: Listing, images_per_unit: int, n_buckets: int | None = None) -> tuple[list[WorkUnit], int]:
    """Units for a listing; ``n_buckets`` is reused from an earlier run so unit ids stay stable.

    Skipped files share the images' buckets (they cost no read); the bucket count follows the images.
    """
    if n_buckets is None:
        n_buckets = max(1, math.ceil(len(listing.images) / images_per_unit))
    buckets: dict[int, list[str]] = {}
    for uri in listing.images + listing.skipped:
        buckets.setdefault(stable_hash(uri) % n_buckets, []).append(uri)
    units = [WorkUnit(f"u{b:05d}", files=tuple(sorted(files))) for b, files in sorted(buckets.items())]
    units += [WorkUnit(f"t{stable_hash(t):016x}", tar=t) for t in listing.tars]
    return units, n_buckets


PROBE_THREADS = 16  # videos probed at once (each probe is a few ranged reads and a header parse)


def _probe_or_none(storage: Storage, uri: str) -> VideoInfo | None:
    try:
        return probe(storage, uri)
    except (VideoError, StorageError):
        return None


def plan_video_units(storage: Storage, videos: list[str], settings: VideoSettings) -> list[WorkUnit]:
    """Frame-range units per video (as many as :func:`probe`'s bounded frame count needs), probing up to
    ``PROBE_THREADS`` videos at once (at most ``storage.max_concurrency``). A video that cannot be probed
    still gets one unit, whose worker turns the failure into an error row."""
    units = []
    threads = min(PROBE_THREADS, storage.settings.max_concurrency, max(1, len(videos)))
    for uri, info in zip(videos, ordered_map(lambda u: _probe_or_none(storage, u), videos, threads), strict=True):
        if info is None:
            units.append(WorkUnit(f"v{stable_hash(uri):016x}-0", video=uri, frame_stride=settings.frame_stride))
            continue
        stride = stride_for(info, settings.frame_stride, settings.fps)
        for start, end in frame_ranges(info, settings.frames_per_unit, stride):
            units.append(WorkUnit(f"v{stable_hash(uri):016x}-{start}", video=uri, frame_start=start, frame_end=end,
                                  frame_stride=stride))
    return units


@dataclass
class RawItem:
    """Bytes of one input, or why there are none.

    ``status``: "ok" (``data`` set), "error" (``error`` says why the input could not be read) or
    "skipped" (not an input that is scored; ``error`` says why). ``member_index`` is the 0-based
    position of a tar member among all the tar's entries, so members with one name stay apart.
    """

    source_uri: str
    member: str | None
    data: bytes | None
    error: str | None = None
    member_index: int | None = None
    status: str = "ok"


def _extension(name: str) -> str:
    return posixpath.splitext(name)[1].lower() or "no extension"


def _loose_item(uri: str, data: bytes | StorageError, limit: int) -> RawItem:
    if isinstance(data, TransientStorageError):
        raise data
    if isinstance(data, StorageError):
        return RawItem(uri, None, None, f"read failed: {data}", status="error")
    if len(data) > limit:
        return RawItem(uri, None, None, f"read failed: file larger than decode.max_file_bytes={limit}",
                       status="error")
    return RawItem(uri, None, data)


def _iter_loose(storage: Storage, files: tuple[str, ...], decode: DecodeSettings) -> Iterator[RawItem]:
    """The unit's loose files in order; images are read concurrently (:meth:`Storage.read_many`)."""
    limit = decode.max_file_bytes
    reads = storage.read_many([uri for uri in files if is_image(uri)], limit)
    for uri in files:
        if is_image(uri):
            yield _loose_item(uri, next(reads), limit)
        else:
            reason = f"skipped: not an image, tar or video ({_extension(posixpath.basename(uri))})"
            yield RawItem(uri, None, None, reason, status="skipped")


def iter_unit_items(storage: Storage, unit: WorkUnit, decode: DecodeSettings) -> Iterator[RawItem]:
    """Yield every input of ``unit``: per-input failures become items with ``error`` set; a
    :class:`TransientStorageError` propagates (the unit fails whole, a re-run retries it)."""
    yield from _iter_loose(storage, unit.files, decode)
    if unit.tar is not None:
        yield from _iter_tar(storage, unit.tar, decode)


def _skip_reason(member: tarfile.TarInfo) -> str | None:
    """Why a (non-directory) tar member is not scored, or None if it is an image file to read."""
    if member.issym():
        return "skipped: symbolic link in tar"
    if member.islnk():
        return "skipped: hard link in tar"
    if not member.isfile():
        return "skipped: device or FIFO entry in tar"
    if not is_image(member.name):
        return f"skipped: not an image ({_extension(member.name)})"
    return None


def _member_item(uri: str, tar: tarfile.TarFile, member: tarfile.TarInfo, index: int, limit: int) -> RawItem:
    reason = _skip_reason(member)
    if reason is not None:
        return RawItem(uri, member.name, None, reason, index, "skipped")
    if member.size > limit:
        return RawItem(uri, member.name, None, f"member larger than decode.max_file_bytes={limit}", index, "error")
    extracted = tar.extractfile(member)
    return RawItem(uri, member.name, extracted.read() if extracted else b"", member_index=index)


def _iter_tar(storage: Storage, uri: str, decode: DecodeSettings) -> Iterator[RawItem]:
    """Stream a shard's members in order; directories give no item, everything else one. A shard
    with no member but folders gets one "skipped" item, so it still has a row."""
    seen = items = 0
    try:
        with storage.open_read(uri) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for index, member in enumerate(tar):
                seen = index + 1
                if not member.isdir():
                    items += 1
                    yield _member_item(uri, tar, member, index, decode.max_file_bytes)
        if not items:
            what = f"only {seen} folder entries" if seen else "no entries"
            yield RawItem(uri, None, None, f"skipped: tar shard holds no files ({what})", status="skipped")
    except TransientStorageError:
        raise
    except (tarfile.TarError, OSError, EOFError, StorageError) as exc:
        yield RawItem(uri, None, None, f"tar shard unreadable after {seen} members: {type(exc).__name__}: {exc}",
                      status="error")
