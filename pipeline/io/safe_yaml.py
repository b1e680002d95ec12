"""YAML from files a user or an archive supplies: safe, without anchors and aliases ("billion laughs"),
at most :data:`MAX_DEPTH` levels deep (PyYAML composes nested nodes recursively: a 1 KB file of 330
nested brackets overflows Python's stack), and with every key of a mapping given once (PyYAML keeps
the last of two silently: a second ``input:`` would quietly win)."""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.errors import ConfigError

MAX_QUOTED = 200  # characters of one input value an error message quotes
MAX_DEPTH = 64  # nested collections; every setting of this product sits at most three deep


def clip_text(text: str, limit: int = MAX_QUOTED) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases (nested aliases expand exponentially: "billion laughs"),
    deeper nesting than :data:`MAX_DEPTH`, or a key given twice in one mapping."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                              "accepted in config files; write the values out")
        if self._depth >= MAX_DEPTH:
            raise ConfigError(f"line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a collection as a key: the settings models refuse it anyway
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"line {line}: key {clip_text(repr(key))} given twice (first on line {first[key]}); "
                                  f"keep one")
            first[key] = line
        return super().construct_mapping(node, deep)


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
