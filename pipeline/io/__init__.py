"""Reading inputs: object storage, listings and work units, image and video decoding, batches, prefetch, safe YAML."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "BACKOFF_CAP_S": "pipeline.io.storage",
    "BACKOFF_FIRST_S": "pipeline.io.storage",
    "Batch": "pipeline.io.batches",
    "Decoded": "pipeline.io.batches",
    "Failed": "pipeline.io.batches",
    "IMAGE_EXTENSIONS": "pipeline.io.sources",
    "LabelledSet": "pipeline.io.labelled",
    "Listing": "pipeline.io.sources",
    "MAX_QUOTED": "pipeline.io.safe_yaml",
    "MIN_PLAUSIBLE_BYTES_PER_FRAME": "pipeline.io.video",
    "MIN_WRITE_BYTES_PER_S": "pipeline.io.storage",
    "R": "pipeline.io.prefetch",
    "READ_TIMEOUT_S": "pipeline.io.storage",
    "REMOTE_BLOCK_BYTES": "pipeline.io.storage",
    "RawItem": "pipeline.io.sources",
    "Storage": "pipeline.io.storage",
    "TAR_EXTENSIONS": "pipeline.io.sources",
    "VIDEO_EXTENSIONS": "pipeline.io.video",
    "VideoFrame": "pipeline.io.video",
    "VideoInfo": "pipeline.io.video",
    "WorkUnit": "pipeline.io.sources",
    "backoff_s": "pipeline.io.storage",
    "clip_text": "pipeline.io.safe_yaml",
    "decode_image": "pipeline.io.decode",
    "frame_ranges": "pipeline.io.video",
    "is_image": "pipeline.io.sources",
    "is_tar": "pipeline.io.sources",
    "is_video": "pipeline.io.video",
    "iter_batches": "pipeline.io.batches",
    "iter_frames": "pipeline.io.video",
    "iter_unit_items": "pipeline.io.sources",
    "join": "pipeline.io.storage",
    "list_inputs": "pipeline.io.sources",
    "load_labelled": "pipeline.io.labelled",
    "ordered_map": "pipeline.io.prefetch",
    "parse_yaml": "pipeline.io.safe_yaml",
    "plan_units": "pipeline.io.sources",
    "plan_video_units": "pipeline.io.sources",
    "prefetched": "pipeline.io.prefetch",
    "probe": "pipeline.io.video",
    "stable_hash": "pipeline.io.sources",
    "stride_for": "pipeline.io.video",
    "to_device": "pipeline.io.prefetch",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
