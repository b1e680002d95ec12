"""Job configuration from a YAML file, with command-line flags on top; errors name the setting to fix.

Every setting has one dotted name (``patchcore.coreset_ratio``); errors name it, so a user
knows which line of the YAML file or which flag to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from pipeline.io.safe_yaml import _NoAliasDumper, clip_text, parse_yaml

SECRETS = ("storage.key", "storage.secret")
MAX_PROBLEMS = 20  # problems listed in one error message



def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section in the config file")
    node[leaf] = value


def _problem(error: Any, flags: Mapping[str, str]) -> str:
    """One line: the YAML key, its flag if it has one, what is wrong, and the (clipped) value given."""
    key = ".".join(str(p) for p in error["loc"])
    if key in flags:
        key = f"{key} ({flags[key]})"
    where = f"{clip_text(key)}: " if key else ""  # no key: a check across settings
    if error["type"] == "missing":
        message = "required"
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    given = error.get("input")
    got = f" (got {clip_text(repr(given))})" if "input" in error and not isinstance(given, dict) else ""
    return f"{where}{clip_text(message)}{got}"


def _format_errors(err: ValidationError, source: str, flags: Mapping[str, str]) -> str:
    """``invalid configuration (SOURCE): problem`` or, for several, the header and one line per problem."""
    problems = [_problem(e, flags) for e in err.errors()[:MAX_PROBLEMS]]
    if err.error_count() > MAX_PROBLEMS:
        problems.append(f"... and {err.error_count() - MAX_PROBLEMS} more")
    if len(problems) == 1:
        return f"invalid configuration ({source}): {problems[0]}"
    return "\n".join([f"invalid configuration ({source}):", *(f"  {p}" for p in problems)])


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read file ({exc.strerror or exc})") from exc
    loaded = parse_yaml(text, f"--config {path}")
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of settings")
    return loaded or {}


def load_config(model: type[BaseModel], path: str | Path | None, overrides: dict[str, Any],
                flags: Mapping[str, str] | None = None) -> Any:
    """Build ``model`` from an optional YAML file, then dotted ``overrides`` (flags) on top.

    ``flags`` maps a dotted key to its command-line flag, so an error names both.
    """
    tree = _read_yaml(path) if path is not None else {}
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        source = "flags" if path is None else f"{path} + flags"
        raise ConfigError(_format_errors(exc, source, flags or {})) from exc


def dump_config(cfg: BaseModel) -> str:
    """``cfg`` as YAML that ``--config`` accepts, with the :data:`SECRETS` that are set shown as ``'***'``."""
    tree = cfg.model_dump(mode="json")
    for key in SECRETS:
        section, leaf = key.split(".")
        if tree.get(section, {}).get(leaf) is not None:
            tree[section][leaf] = "***"
    return yaml.dump(tree, Dumper=_NoAliasDumper, sort_keys=False)
