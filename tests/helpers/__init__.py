"""Helpers the tests share: repository paths, a delaying relay, fault-suite runners, official references."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
OFFICIAL = TEST_DATA / "official"
