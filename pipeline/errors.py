"""Failures a job reports as one line, by the exit code an operator or scheduler acts on.

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
