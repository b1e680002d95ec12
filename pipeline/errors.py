"""Every error type of the product, in one leaf module (it imports nothing of the product).

Failures a job reports as one line, by the exit code an operator or scheduler acts on.

- :class:`SetupError` (exit 2): found before any work: workers that cannot be placed or fail to
  start, unreachable tracking, unreadable weights. ``ConfigError`` and ``StorageError`` share the code.
- :class:`RunIncomplete` (exit 3): the run stopped part-way (e.g. storage went away while writing);
  what was written stands, and a re-run with the same run name finishes it.
"""

from __future__ import annotations


class SetupError(RuntimeError):
    """The job cannot start; the message names the setting or resource to fix."""


class RunIncomplete(RuntimeError):
    """The run stopped part-way; a re-run with the same run name resumes it."""


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the setting."""


class StorageError(RuntimeError):
    """Storage cannot be reached or an object is missing; the message names the URI/setting."""



class TransientStorageError(StorageError):
    """Storage kept failing in a way that may pass (outage, throttling): the input itself may be fine,
    so the work that needed it should fail whole and be retried by a re-run, not recorded as bad input."""


class WeightsError(RuntimeError):
    """Backbone weights could not be loaded; the message names the ``weights`` setting."""


class ClipWeightsError(RuntimeError):
    """CLIP weights could not be loaded; the message names the setting."""


class VideoError(ValueError):
    """The video (or the rest of it) cannot be decoded; the message is the row's ``error``.

    ``frame_index`` is the first frame that could not be decoded, None when the file cannot be
    opened as a video at all: it keeps the error rows of one video apart from each other.
    """

    def __init__(self, message: str, frame_index: int | None = None):
        super().__init__(message)
        self.frame_index = frame_index


class DecodeError(ValueError):
    """The input is not a usable image; the message is the row's ``error``."""


class IndexFileError(ValueError):
    """The bytes are not a faiss index this product reads, or their header claims more than they hold."""


class ImportRefused(ConfigError):
    """The source is not an official PatchCore folder this product can score; the message says why."""
