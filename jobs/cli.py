"""Shared command-line plumbing: flags that map to dotted config settings, and clean failures."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline.config import ConfigError
from pipeline.io.storage import StorageError

COMMON_FLAGS: list[tuple[str, str, type]] = [
    ("--ray-address", "runtime.ray_address", str),
    ("--workers", "runtime.workers", int),
    ("--num-gpus-per-worker", "runtime.num_gpus_per_worker", float),
    ("--num-cpus-per-worker", "runtime.num_cpus_per_worker", float),
    ("--tracking-uri", "tracking.tracking_uri", str),
    ("--experiment", "tracking.experiment", str),
    ("--s3-endpoint-url", "storage.endpoint_url", str),
]


def build_parser(description: str, flags: list[tuple[str, str, type]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    for flag, dotted, kind in flags + COMMON_FLAGS:
        parser.add_argument(flag, dest=f"cfg:{dotted}", type=kind, help=f"sets {dotted}")
    parser.add_argument("--no-tracking", dest="cfg:tracking.enabled", action="store_const", const=False,
                        help="do not log to MLflow")
    return parser


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def run_config_job(description: str, flags: list[tuple[str, str, type]], argv: list[str] | None,
                   run: Callable[[str | None, dict[str, Any]], dict[str, Any]]) -> int:
    """Parse ``--config`` and ``flags``, then ``run(config_path, dotted_overrides)`` through :func:`run_main`."""
    args = build_parser(description, flags).parse_args(argv)
    return run_main(lambda: run(args.config, overrides(args)))


def run_main(job: Callable[[], dict[str, Any]]) -> int:
    """Run ``job``; print its summary as JSON; turn known failures into one clear line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = job()
    except (ConfigError, StorageError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2, default=str))
    return 0
