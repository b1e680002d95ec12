"""Shared command-line plumbing: flags generated from the config models, and exit codes.

A job's flags are a table of :class:`Flag` (flag name -> YAML key); the type, choices, default,
required-ness and description of each come from the pydantic model, so flags and config cannot drift.

Exit codes, one line on stderr for every failure:

- 0: done; the summary is printed as JSON on stdout.
- 1: an unexpected error, likely a bug: ``error: Type: message``; the traceback is logged at DEBUG.
- 2: bad input or setup: a usage error, a config that does not validate, or ``ConfigError``,
  ``StorageError``, ``SetupError``, ``WeightsError`` from the job.
- 3: the run is incomplete (``RunIncomplete``, or work units failed); a re-run with the same run name
  finishes it.
- 130: interrupted.

A plain ``ValueError`` or ``RuntimeError`` exits 2 only while the configuration is read, before the
job starts; from the running job it exits 1, because there it cannot be told from a bug. The pipeline
raises the named errors above for bad user input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import dump_config, load_config
from pipeline.errors import ClipWeightsError, ConfigError, RunIncomplete, SetupError, StorageError, WeightsError

log = logging.getLogger(__name__)

MAX_MESSAGE = 1000  # characters of an error message printed


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets the config setting at ``key``, its YAML key (``patchcore.image_size``)."""

    name: str
    key: str
    metavar: str | None = None  # default: N (int), X (float), the choices (Literal), VALUE (str)
    help: str | None = None  # only for a field whose model has no description yet


COMMON_FLAGS = [
    Flag("--ray-address", "runtime.ray_address", "ADDRESS"),
    Flag("--workers", "runtime.workers"),
    Flag("--num-gpus-per-worker", "runtime.num_gpus_per_worker"),
    Flag("--num-cpus-per-worker", "runtime.num_cpus_per_worker"),
    Flag("--placement-timeout-s", "runtime.placement_timeout_s", "SECONDS"),
    Flag("--unit-timeout-s", "runtime.unit_timeout_s", "SECONDS"),
    Flag("--max-restarts", "runtime.max_restarts"),
    Flag("--tracking-uri", "tracking.tracking_uri", "URI"),
    Flag("--experiment", "tracking.experiment", "NAME"),
    Flag("--s3-endpoint-url", "storage.endpoint_url", "URL"),
]
NO_TRACKING = Flag("--no-tracking", "tracking.enabled")


def field_of(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field behind a dotted YAML key, or None if ``model`` has no such setting."""
    *sections, leaf = key.split(".")
    for section in sections:
        field = model.model_fields.get(section)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model.model_fields.get(leaf)


def _scalar(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the one type a flag's value can have."""
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return annotation


def _help(flag: Flag, field: FieldInfo, choices: tuple[str, ...] | None) -> str:
    what = field.description or flag.help
    if not what:
        raise ValueError(f"{flag.key}: give the field a description (Field(description=...))")
    notes = []
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if field.is_required():
        notes.append("required: this flag or --config")
    elif default is not None:  # None: the description says what unset means
        notes.append(f"default: {default}")
    if choices:
        notes.append("choices: " + ", ".join(choices))
    notes.append(f"YAML: {flag.key}")
    return f"{what} ({'; '.join(notes)})".replace("%", "%%")


def _add_flag(group: argparse._ActionsContainer, model: type[BaseModel], flag: Flag) -> None:
    field = field_of(model, flag.key)
    if field is None:
        raise ValueError(f"{flag.name}: {model.__name__} has no setting {flag.key}")
    kind = _scalar(field.annotation)
    if kind is bool:  # a switch: present sets True (the default is False)
        group.add_argument(flag.name, dest=f"cfg:{flag.key}", action="store_const", const=True,
                           help=_help(flag, field, None))
        return
    choices = get_args(kind) if get_origin(kind) is Literal else None
    if choices:
        kind = str
    if kind not in (int, float, str):
        raise TypeError(f"{flag.name}: {flag.key} ({field.annotation}) has no command-line form")
    metavar = flag.metavar or (None if choices else {int: "N", float: "X", str: "VALUE"}[kind])
    group.add_argument(flag.name, dest=f"cfg:{flag.key}", type=kind, choices=choices, metavar=metavar,
                       help=_help(flag, field, choices))


def job_flags(model: type[BaseModel], flags: Sequence[Flag]) -> list[Flag]:
    """``flags``, then the common flags for the settings ``model`` has."""
    return [*flags, *(f for f in [*COMMON_FLAGS, NO_TRACKING] if field_of(model, f.key) is not None)]


def build_parser(prog: str, description: str, model: type[BaseModel], flags: Sequence[Flag]) -> argparse.ArgumentParser:
    """``--config``, ``--print-config``, ``flags`` and the common flags that apply to ``model``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of settings (the YAML keys below); flags override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings (file + flags + defaults) as YAML and exit")
    settings = parser.add_argument_group("settings")
    common = parser.add_argument_group("cluster, tracking and storage")
    for flag in job_flags(model, flags):
        if flag is NO_TRACKING:
            common.add_argument(flag.name, dest=f"cfg:{flag.key}", action="store_const", const=False,
                                help="do not log to MLflow (YAML: tracking.enabled: false)")
        else:
            _add_flag(settings if flag in flags else common, model, flag)
    return parser


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted settings the flags given on the command line set."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def run_config_job(prog: str, description: str, model: type[BaseModel], flags: Sequence[Flag],
                   argv: list[str] | None, run: Callable[[Any], dict[str, Any]]) -> int:
    """Parse the command line, validate the config, then ``run(config)`` through :func:`run_main`.

    The config is validated before ``run`` is called, so ``run`` imports the heavy job module (torch)
    itself and a bad value fails in well under a second. ``--print-config`` prints it and exits 0.
    """
    args = build_parser(prog, description, model, flags).parse_args(argv)
    names = {f.key: f.name for f in job_flags(model, flags)}
    try:
        cfg = load_config(model, args.config, overrides(args), names)
    except ValueError as exc:  # everything wrong here is in the input: ConfigError and the like
        print(f"error: {_clip(str(exc), 4 * MAX_MESSAGE)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    return run_main(lambda: run(cfg), getattr(cfg, "run_name", None), resumable="run_name" in model.model_fields)


def setup_logging() -> None:
    """INFO progress lines on stdout, so they reach ``ray job logs`` whether or not it is a terminal."""
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _fail(code: int, message: str) -> int:
    print(_clip(" ".join(message.split())), file=sys.stderr)
    return code


def _setup_errors() -> tuple[type[Exception], ...]:
    """Errors in the user's input or environment."""
    return (ConfigError, StorageError, SetupError, WeightsError, ClipWeightsError)


def _rerun(run_name: str | None) -> str:
    return f"--run-name {run_name}" if run_name else "the same --run-name"


def _failed_units_line(summary: dict[str, Any], run_name: str | None) -> str:
    """What happened to the failed units' inputs: error rows, or (storage gone) no rows yet for some."""
    failed = len(summary["failed_units"])
    unwritten = len(summary.get("failed_units_without_rows") or [])
    of = f" of {summary['n_units']}" if "n_units" in summary else ""
    if unwritten == failed:
        what = "their error rows could not be written either, so their inputs have no rows yet"
    elif unwritten:
        what = (f"the inputs of {failed - unwritten} have error rows; the error rows of {unwritten} could not be "
                f"written, so their inputs have no rows yet")
    else:
        what = "their inputs have error rows"
    return (f"error: {failed}{of} work units failed ({what}; none has a completion marker); "
            f"re-run with {_rerun(summary.get('run_id') or run_name)} to retry them")


def run_main(job: Callable[[], dict[str, Any]], run_name: str | None = None, resumable: bool = False) -> int:
    """Run ``job`` and print its summary as JSON on stdout; see the module docstring for the exit codes.

    ``run_name`` and ``resumable`` (the job takes ``--run-name``) make the lines on interrupt and on
    failed units say how to resume.
    """
    setup_logging()
    try:
        summary = job()
    except KeyboardInterrupt:
        return _fail(130, f"interrupted; re-run with {_rerun(run_name)} to resume" if resumable else "interrupted")
    except RunIncomplete as exc:
        return _fail(3, f"error: {exc}")
    except Exception as exc:
        if isinstance(exc, _setup_errors()):
            return _fail(2, f"error: {exc}")
        log.debug("the job failed", exc_info=True)
        return _fail(1, f"error: {type(exc).__name__}: {exc}")
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2, default=str))
    if isinstance(summary.get("failed_units"), list) and summary["failed_units"]:
        return _fail(3, _failed_units_line(summary, run_name))
    return 0
