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
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from pipeline.io.storage import Storage

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")


def is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    n_frames: int  # an estimate from the container header; the last unit is open-ended anyway


@dataclass
class VideoFrame:
    index: int
    timestamp_s: float
    rgb: np.ndarray


class VideoError(ValueError):
    """The video (or the rest of it) cannot be decoded; the message is the row's ``error``."""


def _info(container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    n = stream.frames or 0
    if n <= 0 and container.duration:
        n = int(container.duration / 1_000_000 * fps)
    return VideoInfo(fps=fps, n_frames=max(0, n))


def probe(storage: Storage, uri: str) -> VideoInfo:
    with storage.open_read(uri) as fh:
        try:
            with av.open(fh) as container:
                return _info(container)
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV raises many types for "not a video"
            raise VideoError(f"not a decodable video: {type(exc).__name__}: {exc}") from exc


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

    Raises :class:`VideoError` where decoding breaks; frames yielded before that stand.
    """
    last_bucket = None
    last_index: int | str = "none (broken before the first frame)"
    with storage.open_read(uri) as fh:
        try:
            container = av.open(fh)
        except Exception as exc:  # noqa: BLE001
            raise VideoError(f"not a decodable video: {type(exc).__name__}: {exc}") from exc
        with container:
            info = _info(container)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = info.fps
            origin = stream.start_time or 0
            base = float(stream.time_base)
            if start > 0:
                container.seek(int(origin + start / fps / base), stream=stream, backward=True)
            decoded, seen = 0, -1
            try:
                for frame in container.decode(stream):
                    t = (frame.pts - origin) * base if frame.pts is not None else decoded / fps
                    decoded += 1
                    index = round(t * fps)
                    seen = max(seen, index)
                    if index < start:
                        continue
                    if end is not None and index >= end:
                        return
                    bucket = index // stride
                    if bucket == last_bucket:
                        continue
                    last_bucket = bucket
                    last_index = index
                    yield VideoFrame(index, t, frame.to_ndarray(format="rgb24"))
            except av.error.FFmpegError as exc:
                raise VideoError(f"video broken after frame {last_index}: {type(exc).__name__}: {exc}") from exc
            # Streams cut short often end without an error: compare with what the header promised.
            promised = info.n_frames if end is None else min(end, info.n_frames)
            if promised and seen < promised - 1 - max(2, 0.02 * promised):
                raise VideoError(f"video ends at frame {seen} but its header promises {promised} frames: truncated")
