"""Config files read safely: bytes → UTF-8 text → YAML → plain data, and the line of every field.

What a broken or hostile file can do is bounded here, and every refusal is one line
``file:line field.path: message`` (:func:`problem`), never a traceback:

- only a regular file is read (a FIFO would block for ever, ``/dev/zero`` never end), and at
  most :data:`MAX_CONFIG_BYTES` of it;
- the text is strict UTF-8 (a leading BOM is allowed): binary garbage or a Latin-1 file is
  refused at the line of its first bad byte;
- nesting is at most :data:`MAX_DEPTH` levels, a file has at most :data:`MAX_ALIASES` aliases
  (``*name``), and expanding them may add at most :data:`MAX_ALIAS_NODES` nodes. The data is
  built straight from the parser's events (no node graph: memory stays a small multiple of the
  data's), an alias shares the anchored value and counts its size against the budget, so an
  alias-expansion bomb is refused at its first alias past the budget, before anything expands;
- a key given twice in one mapping is an error at the second (YAML would silently keep the
  last: ``writes_enabled: false`` … ``writes_enabled: true``);
- keys are text; merge keys (``<<``), tags on mappings or sequences and scalar tags other than
  the plain ones (str, int, float, bool, null, timestamp) are refused: nothing in a config needs
  them, and they would change what a reader of the file thinks it says.

libyaml parses when it is installed (several times faster); building from the events is always
this module's, so the budgets hold either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode
from yaml.reader import ReaderError
from yaml.resolver import Resolver

from agent.configbase import Loc
from agent.errors import ConfigError

__all__ = [
    "MAX_ALIASES",
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "LineMap",
    "compose",
    "decode",
    "format_loc",
    "line_for",
    "problem",
    "read_text",
]

MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""The largest config file read (a 1,000-tag config is about 150 KiB)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences, aliases expanded (a config needs about 8)."""
MAX_ALIASES = 256
"""Most aliases (``*name``) in one file."""
MAX_ALIAS_NODES = 100_000
"""Most nodes that expanding the aliases may add to the file's own."""

LineMap = dict[Loc, int]
"""Field path → 1-based line where the config gives it."""

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")
)
_SIMPLE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")


# --------------------------------------------------------------------------- messages


def format_loc(loc: Sequence[int | str]) -> str:
    """``("devices", 1, "tags", 3, "type")`` → ``devices[1].tags[3].type``.

    A key that is not a plain name is shown quoted (``values['a b']``), so that a key holding a
    line break or a dot cannot break the one-line message or fake a path.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and set(part) <= _SIMPLE_KEY:
            out += ("." if out else "") + part
        else:
            out += f"[{part!r}]"
    return out or "(top level)"


def problem(source: str, line: int, loc: Sequence[int | str] | str, message: str) -> str:
    """One problem as ``file:line field.path: message``, on one line whatever it contains."""
    where = loc if isinstance(loc, str) else format_loc(loc)
    text = f"{source}:{line} {where}: {message.strip() or 'invalid'}"
    return " ".join(text.splitlines())


def line_for(loc: Loc, lines: LineMap) -> int:
    """The line of ``loc``, or of its nearest ancestor the file gives (1 when none)."""
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    return lines.get(probe, 1)


def _fail(source: str, line: int, loc: Sequence[int | str] | str, message: str) -> ConfigError:
    return ConfigError([problem(source, line, loc, message)])


# --------------------------------------------------------------------------- bytes and text


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a config file: a regular file, at most :data:`MAX_CONFIG_BYTES`, strict UTF-8."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _fail(source, 1, "(file)", f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise _fail(source, 1, "(file)", f"cannot read: {exc}") from None
    try:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _fail(source, 1, "(file)", "not a regular file")
            chunks: list[bytes] = []
            left = MAX_CONFIG_BYTES + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as exc:
            raise _fail(source, 1, "(file)", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_CONFIG_BYTES:
        raise _fail(source, 1, "(file)", f"larger than {_size(MAX_CONFIG_BYTES)}: not read")
    return decode(data, source)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def decode(data: bytes, source: str) -> str:
    """Strict UTF-8 (a leading BOM dropped); the error names the line of the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _fail(
            source,
            line,
            "(encoding)",
            f"not UTF-8: byte 0x{data[exc.start]:02X} at column {column} (binary data, or another "
            "encoding such as Latin-1): save the file as UTF-8",
        ) from None
    return text.removeprefix("\ufeff")


# --------------------------------------------------------------------------- composing


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Events(CParser, SafeConstructor, Resolver):
        """libyaml's parser (events), the resolver and the safe constructors for scalars."""

        def __init__(self, text: str) -> None:
            # libyaml reads bytes: its positions (in reader errors) are byte offsets.
            CParser.__init__(self, text.encode("utf-8"))
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _BYTE_POSITIONS = True
else:  # pragma: no cover - libyaml is in every supported install; kept for a bare PyYAML
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Events(Reader, Scanner, Parser, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _BYTE_POSITIONS = False


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> str:
    if isinstance(exc, ReaderError):
        pos = int(exc.position or 0)
        before = text.encode("utf-8")[:pos].decode("utf-8", "replace") if _BYTE_POSITIONS else text[:pos]
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        return problem(
            source, before.count("\n") + 1, "(yaml)", f"unacceptable character {shown}: {exc.reason}"
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            message = f"{exc.problem} ({exc.context})"
        return problem(source, line, "(yaml)", message)
    return problem(source, 1, "(yaml)", str(exc))


def compose(text: str, source: str) -> tuple[Any, LineMap]:
    """YAML text → plain data (dicts, lists, scalars) and the line of every field path.

    Raises ConfigError (one line each) for anything this module refuses, for invalid YAML and
    for text larger than :data:`MAX_CONFIG_BYTES`.
    """
    if len(text) > MAX_CONFIG_BYTES:  # characters <= bytes: this much text is surely too big
        raise _fail(source, 1, "(file)", f"larger than {_size(MAX_CONFIG_BYTES)}: not read")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        char = ord(text[exc.start])
        raise _fail(
            source, line, "(encoding)", f"character U+{char:04X} is not text (a lone surrogate)"
        ) from None
    if size > MAX_CONFIG_BYTES:
        raise _fail(source, 1, "(file)", f"larger than {_size(MAX_CONFIG_BYTES)}: not read")
    events = _Events(text)
    try:
        builder = _Builder(events, source)
        return builder.document(), builder.lines
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text, source)]) from None
    finally:
        events.dispose()


class _Builder:
    """Parser events → plain data, recording lines and enforcing every budget as events arrive.

    No node graph is built (it would cost several times the data's memory): an alias returns
    the anchored value itself, shared, and adds the anchored value's node count to the
    expansion budget, so a bomb is refused at its first alias past the budget, before anything
    could be expanded by whoever walks the data.
    """

    def __init__(self, events: _Events, source: str) -> None:
        self.events: Any = events  # the parser's methods are untyped in the stubs
        self.source = source
        self.lines: LineMap = {}
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name → (value, nodes, height)
        self.open: set[str] = set()  # anchors whose node is being built
        self.aliases = 0
        self.expanded = 0  # nodes the aliases add to the file's own

    def document(self) -> Any:
        ev = self.events
        ev.get_event()  # stream start
        if ev.check_event(StreamEndEvent):
            return {}  # an empty file (or only comments): "no devices configured" says the rest
        ev.get_event()  # document start
        data, _, _ = self.node((), 1)
        ev.get_event()  # document end
        if not ev.check_event(StreamEndEvent):
            raise self._error(ev.peek_event(), "(yaml)", "a second document (---): a config is one document")
        return data

    def node(self, loc: Loc, depth: int) -> tuple[Any, int, int]:
        """Build one node at ``loc``: (value, nodes it stands for, height)."""
        event: Event = self.events.get_event()
        self.lines.setdefault(loc, _line(event))
        if isinstance(event, AliasEvent):
            return self._alias(event, depth)
        anchor: str | None = getattr(event, "anchor", None)
        if anchor is not None and (anchor in self.anchors or anchor in self.open):
            raise self._error(event, loc, f"anchor &{anchor} is defined twice")
        if isinstance(event, ScalarEvent):
            result: tuple[Any, int, int] = (self._scalar(event, loc), 1, 1)
        else:
            if depth > MAX_DEPTH:
                raise self._error(event, "(yaml)", f"nested more than {MAX_DEPTH} levels deep")
            if anchor is not None:
                self.open.add(anchor)
            if isinstance(event, SequenceStartEvent):
                result = self._sequence(event, loc, depth)
            elif isinstance(event, MappingStartEvent):
                result = self._mapping(event, loc, depth)
            else:  # the parser gives no other event here
                raise self._error(event, "(yaml)", f"unexpected {type(event).__name__}")
            if anchor is not None:
                self.open.discard(anchor)
        if anchor is not None:
            self.anchors[anchor] = result
        return result

    def _alias(self, event: AliasEvent, depth: int) -> tuple[Any, int, int]:
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise self._error(event, "(yaml)", f"more than {MAX_ALIASES} aliases (*name)")
        name = str(event.anchor)
        if name in self.open:
            raise self._error(event, "(yaml)", f"recursive alias *{name}: a node contains itself")
        got = self.anchors.get(name)
        if got is None:
            raise self._error(event, "(yaml)", f"found undefined alias {name!r}")
        _, nodes, height = got
        self.expanded += nodes
        if self.expanded > MAX_ALIAS_NODES:
            raise self._error(
                event,
                "(yaml)",
                f"aliases (*name) up to here would expand to {self.expanded} nodes, more than "
                f"{MAX_ALIAS_NODES} beyond the file's own: refused (an alias-expansion bomb?)",
            )
        if depth + height - 1 > MAX_DEPTH:
            raise self._error(event, "(yaml)", f"nested more than {MAX_DEPTH} levels deep (aliases expanded)")
        return got

    def _sequence(self, event: SequenceStartEvent, loc: Loc, depth: int) -> tuple[Any, int, int]:
        tag = event.tag if event.tag not in (None, "!") else _SEQ_TAG
        if tag != _SEQ_TAG:
            raise self._error(event, loc, f"unsupported tag {tag} on a sequence")
        items: list[Any] = []
        nodes, height = 1, 1
        while not self.events.check_event(SequenceEndEvent):
            value, n, h = self.node((*loc, len(items)), depth + 1)
            items.append(value)
            nodes, height = nodes + n, max(height, h + 1)
        self.events.get_event()
        return items, nodes, height

    def _mapping(self, event: MappingStartEvent, loc: Loc, depth: int) -> tuple[Any, int, int]:
        tag = event.tag if event.tag not in (None, "!") else _MAP_TAG
        if tag != _MAP_TAG:
            raise self._error(event, loc, f"unsupported tag {tag} on a mapping")
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        nodes, height = 1, 1
        while not self.events.check_event(MappingEndEvent):
            key_event: Event = self.events.peek_event()
            if not isinstance(key_event, ScalarEvent | AliasEvent):
                raise self._error(key_event, loc, "a key must be plain text, not a mapping or a sequence")
            key, n, _ = self.node(loc, depth + 1)
            nodes += n
            if not isinstance(key, str):
                raw = key_event.value if isinstance(key_event, ScalarEvent) else key
                raise self._error(
                    key_event, loc, f"key {raw!r} reads as {type(key).__name__}, not text: quote it"
                )
            line = _line(key_event)
            if key in first:
                raise self._error(
                    key_event,
                    (*loc, key),
                    f"duplicate key (first given at line {first[key]}; YAML would silently keep the last)",
                )
            first[key] = line
            self.lines[(*loc, key)] = line
            value, n, h = self.node((*loc, key), depth + 1)
            out[key] = value
            nodes, height = nodes + n, max(height, h + 1)
        self.events.get_event()
        return out, nodes, height

    def _scalar(self, event: ScalarEvent, loc: Loc) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.events.resolve(ScalarNode, event.value, event.implicit)
        if tag == _MERGE_TAG:
            raise self._error(event, loc, "merge keys (<<) are not supported: write the keys out")
        if tag not in _SCALAR_TAGS:
            raise self._error(event, loc, f"unsupported tag {tag}")
        start: Any = event.start_mark  # libyaml's Mark is not in the stubs' union
        node = ScalarNode(tag, event.value, start, start, style=event.style)
        try:
            return self.events.yaml_constructors[tag](self.events, node)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # e.g. a 13th month
            raise self._error(event, loc, f"cannot read value {event.value!r}: {exc}") from None

    def _error(self, event: Event, loc: Loc | str, message: str) -> ConfigError:
        return _fail(self.source, _line(event), loc, message)


def _line(event: Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1
