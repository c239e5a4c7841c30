"""Reading, decoding and parsing a config source: bounded, total, and blocking only its thread.

Every function here either returns a value or raises ``ConfigError`` with a message an operator
can act on; no other exception escapes for any input (a FIFO, a directory, a huge file, a
non-UTF-8 byte, a YAML alias bomb, nesting deep enough to exhaust the stack). They are
synchronous and do file I/O or CPU-bound work: reloads call them through
``anyio.to_thread.run_sync`` so the event loop never waits on a config.

Limits: a config is at most ``MAX_CONFIG_BYTES`` on disk, and its YAML document at most
``MAX_YAML_NODES`` nodes once aliases are expanded, with at most ``MAX_YAML_ALIASES`` aliases.
Every later stage (env references, validation) walks the expanded tree, so bounding it is what
keeps a 1 KB "billion laughs" document from costing seconds or gigabytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from routeiq.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_ALIASES",
    "MAX_YAML_NODES",
    "decode_config",
    "file_status",
    "parse_yaml",
    "read_config_bytes",
    "read_config_text",
]

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
MAX_YAML_ALIASES = 10_000

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_config_bytes(path: Path, *, origin: str = "config file") -> bytes:
    """The bytes of the regular file at ``path`` (never blocks on a FIFO or device)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError([(origin, f"file not found: {path}")], source=str(path)) from None
    except OSError as exc:
        raise ConfigError(
            [(origin, f"cannot read {path}: {_reason(exc)}")], source=str(path)
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                [(origin, f"{path} is {_kind(info.st_mode)}, not a regular file")],
                source=str(path),
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError([(origin, _too_large(path, info.st_size))], source=str(path))
        chunks: list[bytes] = []
        size = 0
        while True:  # read past the limit by one chunk: the file may have grown since fstat
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise ConfigError([(origin, _too_large(path, size))], source=str(path))
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(
            [(origin, f"cannot read {path}: {_reason(exc)}")], source=str(path)
        ) from None
    finally:
        os.close(fd)


def decode_config(data: bytes, *, source: str) -> str:
    """``data`` as UTF-8 text; a bad byte is reported with its line, column and byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [
                (
                    "",
                    f"not valid UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column "
                    f"{column} (byte offset {exc.start}); save the file as UTF-8",
                )
            ],
            source=source,
        ) from None


def read_config_text(path: Path, *, origin: str = "config file") -> str:
    """``read_config_bytes`` then ``decode_config``."""
    return decode_config(read_config_bytes(path, origin=origin), source=str(path))


def file_status(path: Path) -> str:
    """What identifies the file's current version without reading it (mode, inode, size,
    times), or the reason ``stat`` failed: a change key for sources that cannot be read."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"stat failed: {exc.errno}"
    return f"{info.st_mode}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def parse_yaml(text: str, *, source: str) -> Any:
    """The one YAML document in ``text`` (``None`` when empty), within the node limits."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        where = ""
        mark = exc.problem_mark
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = exc.problem or "malformed YAML"
        raise ConfigError([("", f"YAML syntax error{where}: {problem}")], source=source) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            [
                (
                    "",
                    f"YAML syntax error: character U+{exc.character:04X} is not allowed "
                    f"(character offset {exc.position})",
                )
            ],
            source=source,
        ) from None
    except yaml.YAMLError as exc:
        first = (str(exc).splitlines() or ["malformed YAML"])[0]
        raise ConfigError([("", f"YAML error: {first}")], source=source) from None
    except RecursionError:
        raise ConfigError([("", "YAML is nested too deeply")], source=source) from None
    except (ValueError, OverflowError, TypeError) as exc:
        # e.g. a timestamp-looking scalar that is no date (``2024-13-45``)
        raise ConfigError(
            [("", f"YAML value cannot be read: {type(exc).__name__}: {exc}")], source=source
        ) from None
    finally:
        loader.dispose()


def _check_size(root: yaml.Node, source: str) -> None:
    """Reject documents whose alias-expanded tree exceeds the limits, in time linear in the
    number of distinct nodes (expanded sizes are memoised per node)."""
    sizes: dict[int, int] = {}
    aliases = 0
    # Iterative post-order walk: deep nesting must not exhaust the stack here either.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    reached: set[int] = {id(root)}
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            active.discard(key)
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > MAX_YAML_NODES:
                raise ConfigError(
                    [("", _expanded_too_large(total, line=node.start_mark.line + 1))],
                    source=source,
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        active.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise ConfigError(
                    [("", f"YAML alias at line {child.start_mark.line + 1} refers to itself")],
                    source=source,
                )
            if id(child) in reached:  # a node reached again is an alias use
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise ConfigError(
                        [("", f"YAML uses more than {MAX_YAML_ALIASES} aliases")], source=source
                    )
                if id(child) in sizes:
                    continue
            reached.add(id(child))
            stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_too_large(total: int, *, line: int) -> str:
    return (
        f"YAML expands to more than {MAX_YAML_NODES} nodes (at least {total}, from line {line}): "
        "aliases (*name) repeat their anchor's content"
    )


def _too_large(path: Path, size: int) -> str:
    return f"{path} is larger than {MAX_CONFIG_BYTES} bytes (at least {size})"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EISDIR:
        return "it is a directory"
    return exc.strerror or type(exc).__name__
