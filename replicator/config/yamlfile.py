"""YAML files that remember where each key was written, so errors can name the line."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replicator.errors import ConfigError

Loc = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# A config is a few kilobytes; these bound what a mistaken or hostile file can cost.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_VALUES = 100_000  # values after aliases are expanded (a "billion laughs" has 10^9)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file: its data plus the line of every mapping key and list item."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    # Values that came from ${VAR}: location -> (variable name, value) pairs. Messages never echo them.
    expanded: dict[Loc, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest enclosing key (at worst the top mapping's first line)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def expansions_at(self, loc: Loc) -> tuple[tuple[str, str], ...]:
        """The ${VAR} values at ``loc``, inside it or around it."""
        n = len(loc)
        return tuple(
            pair for where, pairs in self.expanded.items()
            if where[:n] == tuple(loc) or tuple(loc)[:len(where)] == where
            for pair in pairs
        )

    def hide_expanded(self, text: str, loc: Loc) -> str:
        """``text`` with every value that came from ${VAR} at ``loc`` replaced by the variable's name."""
        for name, value in self.expansions_at(loc):
            if value:
                text = text.replace(value, f"${{{name}}}")
        return text

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
    """Read a YAML file; ``${VAR}`` in string values is replaced from the environment.

    Only a regular file of at most ``MAX_CONFIG_BYTES`` is read: ``/dev/zero`` would grow without
    bound and a FIFO would wait for a writer forever.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can refuse it.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{p}: not a regular file ({_file_kind(mode)}): give the path of a YAML file")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 1024 // 1024} MB: not a replicator config")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: cannot read: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_yaml(text, p)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def parse_yaml(text: str, path: Path) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _refuse_alias_bombs(node, path)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: values nested too deeply: not a replicator config") from None
    lines: dict[Loc, int] = {}
    expanded: dict[Loc, tuple[tuple[str, str], ...]] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _record_lines(node, (), lines, path)
    return YamlDoc(path=path, data=_expand_env(data, (), lines, path, expanded), lines=lines, expanded=expanded)


def _refuse_alias_bombs(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand to more than MAX_CONFIG_VALUES values, or into themselves.

    Aliases share one node, so the composed graph is small; what explodes is every walk over the
    expanded tree (line numbers, ${VAR}, validation). Sizes are counted once per node.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: an alias refers to the value that contains it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        open_nodes.discard(key)
        if total > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: aliases expand to more than {MAX_CONFIG_VALUES:,} values "
                f"(an alias bomb?): not a replicator config"
            )
        sizes[key] = total
        return total

    size(root)


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


def _expand_env(
    value: Any, loc: Loc, lines: dict[Loc, int], path: Path, expanded: dict[Loc, tuple[tuple[str, str], ...]]
) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), lines, path, expanded) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), lines, path, expanded) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        used: list[tuple[str, str]] = []

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                where = YamlDoc(path, None, lines).where(loc)
                key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
                raise ConfigError(f"{where}: {key}: environment variable {name} is not set")
            used.append((name, os.environ[name]))
            return os.environ[name]

        result = _ENV_REF.sub(sub, value)
        if used:
            expanded[loc] = tuple(used)
        return result
    return value
