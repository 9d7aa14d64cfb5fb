"""YAML files that remember where each key was written, so errors can name the line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replicator.errors import ConfigError

Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file: its data plus the line of every mapping key and list item."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest enclosing key when ``loc`` itself was not written."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def written(self, loc: Loc) -> Loc:
        """``loc`` as written in the file: a list index where the file has a single mapping is dropped.

        Some keys accept one mapping or a list of them; validation sees a list either way.
        """
        out: list[str | int] = []
        node = self.data
        for part in loc:
            if isinstance(part, int) and isinstance(node, dict):
                continue
            out.append(part)
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
        return tuple(out)

    def where(self, loc: Loc = ()) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else str(self.path)


def load_yaml(path: str | os.PathLike[str]) -> YamlDoc:
    """Read a YAML file; ``${VAR}`` in string values is replaced from the environment."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    return parse_yaml(text, p)


def parse_yaml(text: str, path: Path) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _record_lines(node, (), lines, path)
    return YamlDoc(path=path, data=_expand_env(data, (), lines, path), lines=lines)


def _record_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{path}:{line}: key '{key}' appears twice (first on line {seen[key]})")
            seen[key] = line
            lines[(*loc, key)] = line
            _record_lines(value_node, (*loc, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _record_lines(item, (*loc, i), lines, path)


def _expand_env(value: Any, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), lines, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), lines, path) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                where = YamlDoc(path, None, lines).where(loc)
                key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
                raise ConfigError(f"{where}: {key}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    return value
