"""Video files (local or ``s3://``) decoded with PyAV into sampled RGB frames.

Frame numbering: ``frame_index = round(t * fps)`` on the stream's timeline (``t`` from the
frame's timestamp, ``fps`` the stream's average rate). For constant-rate video it is the plain
decode count; for variable-rate or frame-dropping files it stays correct after a seek, which is
what lets one long video be split into frame-range work units on different workers.

Sampling: ``stride`` keeps the first decoded frame of every ``stride``-long run of indices
(``target_fps`` picks the stride from the stream's rate). Units are cut on multiples of the
stride, so splitting never changes which frames are kept.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import IO

import av
import numpy as np

from pipeline.errors import StorageError, TransientStorageError, VideoError
from pipeline.io.storage import Storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")


def is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    n_frames: int  # the header's count, a hint (probe caps it, see there); the last unit is open-ended anyway


@dataclass
class VideoFrame:
    index: int
    timestamp_s: float
    rgb: np.ndarray


def _open(fh: IO[bytes]) -> av.container.InputContainer:
    if not fh.read(1):  # FFmpeg's word for an empty file is "Invalid argument"
        raise VideoError("empty file (0 bytes)")
    fh.seek(0)
    try:
        return av.open(fh)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types for "not a video"
        raise VideoError(f"not a decodable video: {type(exc).__name__}: {exc}") from exc


def _info(container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    n = stream.frames or 0
    if n <= 0 and container.duration:
        n = int(container.duration / 1_000_000 * fps)
    return VideoInfo(fps=fps, n_frames=max(0, n))


MIN_PLAUSIBLE_BYTES_PER_FRAME = 100  # below this average a header's frame count is checked by demuxing


def probe(storage: Storage, uri: str) -> VideoInfo:
    """Frame rate and the frame count to plan units for.

    Header counts are a hint, not a plan. Real compressed video spends hundreds of bytes or more on
    an average frame; when the header claims more frames than ``size / 100`` bytes allow, the frames
    are counted by demuxing the stream's packets (no decoding: it reads the file once, which for such
    a file is cheap next to decoding it). A file whose 4 MB claim 10^9 frames is planned from what it
    holds. Units past the real end yield nothing anyway (see :func:`iter_frames`).
    """
    size = storage.size(uri)
    with storage.open_read(uri) as fh, _open(fh) as container:
        info = _info(container)
        if info.n_frames * MIN_PLAUSIBLE_BYTES_PER_FRAME <= size:
            return info
        stream = container.streams.video[0]
        try:
            counted = sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError:
            counted = min(info.n_frames, size)  # cannot count: one frame per byte at most
    return replace(info, n_frames=counted)


def stride_for(info: VideoInfo, stride: int, target_fps: float | None) -> int:
    if target_fps:
        return max(1, round(info.fps / target_fps))
    return max(1, stride)


def frame_ranges(info: VideoInfo, frames_per_unit: int, stride: int) -> list[tuple[int, int | None]]:
    """``[start, end)`` ranges on multiples of ``stride``; the last one is open (``None``)."""
    step = max(stride, (frames_per_unit // stride) * stride)
    count = max(1, math.ceil(info.n_frames / step))
    return [(i * step, (i + 1) * step if i < count - 1 else None) for i in range(count)]


def iter_frames(storage: Storage, uri: str, start: int, end: int | None, stride: int) -> Iterator[VideoFrame]:
    """Decode frames with ``start <= index < end`` and keep one per stride bucket.

    Raises :class:`VideoError` where decoding breaks; frames yielded before that stand. At the end
    of the stream only the unit whose range holds the video's real end (or unit 0, when nothing
    decodes) checks it against the header, so a video gives at most one truncation error; a unit
    wholly past the real end yields nothing. A :class:`TransientStorageError` propagates.
    """
    with storage.open_read(uri) as fh, _open(fh) as container:
        info = _info(container)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        seen = yield from _decode_range(container, stream, info.fps, start, end, stride)
    if seen is not None:
        _check_real_end(info, start, seen)


def _decode_range(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float,
                  start: int, end: int | None, stride: int) -> Generator[VideoFrame, None, int | None]:
    """Yield the range's sampled frames; return the highest index decoded when the stream ended
    before ``end`` (-1 if nothing decoded), None when the range is done."""
    origin = stream.start_time or 0
    base = float(stream.time_base)
    decoded, seen, last_bucket = 0, -1, None
    try:
        if start > 0:
            container.seek(int(origin + start / fps / base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = (frame.pts - origin) * base if frame.pts is not None else decoded / fps
            decoded += 1
            index = round(t * fps)
            seen = max(seen, index)
            if end is not None and index >= end:
                return None
            if index < start or index // stride == last_bucket:
                continue
            last_bucket = index // stride
            yield VideoFrame(index, t, frame.to_ndarray(format="rgb24"))
    except TransientStorageError:
        raise
    except (av.error.FFmpegError, StorageError) as exc:
        first = max(seen + 1, start)
        raise VideoError(f"video broken at frame {first}: {type(exc).__name__}: {exc}", first) from exc
    return seen


def _check_real_end(info: VideoInfo, start: int, seen: int) -> None:
    """The stream ended at frame ``seen``: report it if it is this unit's to report."""
    if start > 0 and seen < start:
        return  # the video ended before this unit's range; the unit holding the end reports it
    if seen < 0:
        raise VideoError("video has no decodable frames", start)
    promised = info.n_frames
    if promised and seen < promised - 1 - max(2, 0.02 * promised):
        raise VideoError(f"video ends at frame {seen} but its header promises {promised} frames: truncated", seen + 1)
