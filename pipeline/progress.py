"""Progress lines where Ray users look (``ray job logs``): plain log lines, terminal or not."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """Logs ``done/total units, items, items/s, errors`` every ``every_units`` units (about 20 lines
    per run) or every ``every_s`` seconds, whichever comes first, and once at the end."""

    def __init__(self, label: str, total_units: int, item_name: str, every_s: float = 60.0):
        self.label, self.total, self.item_name, self.every_s = label, total_units, item_name, every_s
        self.every_units = max(1, total_units // 20)
        self.units = self.items = self.errors = 0
        self.start = self.last = time.monotonic()

    def update(self, items: int, errors: int = 0) -> None:
        self.units += 1
        self.items += items
        self.errors += errors
        now = time.monotonic()
        if self.units % self.every_units == 0 or now - self.last >= self.every_s:
            self._line(now)

    def finish(self) -> None:
        if self.units % self.every_units:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last = now
        rate = self.items / max(now - self.start, 1e-9)
        log.info("%s: %d/%d units, %d %s, %.1f %s/s, %d errors", self.label, self.units, self.total, self.items,
                 self.item_name, rate, self.item_name, self.errors)
