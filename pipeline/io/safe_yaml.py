"""YAML from files a user or an archive supplies: safe, without anchors and aliases ("billion laughs")."""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.errors import ConfigError

MAX_QUOTED = 200  # characters of one input value an error message quotes


def clip_text(text: str, limit: int = MAX_QUOTED) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: nested aliases expand exponentially ("billion laughs")."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                              "accepted in config files; write the values out")
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values out, so :class:`_NoAliasLoader` reads the output back."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def parse_yaml(text: str, source: str) -> Any:
    """Safe YAML without anchors and aliases; errors are ConfigErrors that start with ``source``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({clip_text(str(exc), 500)})") from exc
