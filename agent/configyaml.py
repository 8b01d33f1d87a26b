"""Config files read safely: bytes → UTF-8 text → YAML → plain data, and the line of every field.

What a broken or hostile file can do is bounded here, and every refusal is one line
``file:line field.path: message`` (:func:`problem`), never a traceback:

- only a regular file is read (a FIFO would block for ever, ``/dev/zero`` never end), and at
  most :data:`MAX_CONFIG_BYTES` of it;
- the text is strict UTF-8 (a leading BOM is allowed): binary garbage or a Latin-1 file is
  refused at the line of its first bad byte;
- nesting is at most :data:`MAX_DEPTH` levels, a file has at most :data:`MAX_ALIASES` aliases
  (``*name``), and expanding them may add at most :data:`MAX_ALIAS_NODES` nodes. Composing
  keeps an alias as a reference to one shared node, so an alias-expansion bomb stays a small
  graph; its expanded size is counted on that graph (memoized, linear in the file) and refused
  before anything is expanded;
- a key given twice in one mapping is an error at the second (YAML would silently keep the
  last: ``writes_enabled: false`` … ``writes_enabled: true``);
- keys are text; merge keys (``<<``), tags on mappings or sequences and scalar tags other than
  the plain ones (str, int, float, bool, null, timestamp) are refused: nothing in a config needs
  them, and they would change what a reader of the file thinks it says.

libyaml parses when it is installed (several times faster); composing is always this module's,
so the budgets hold either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
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


class _BudgetComposer(Composer):
    """PyYAML's composer with a depth limit and an alias budget (checked as events arrive)."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):  # type: ignore[attr-defined]  # from the parser
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[attr-defined]
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases (*name)", mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[attr-defined]
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Loader(_BudgetComposer, CParser, SafeConstructor, Resolver):
        """libyaml's events, our composer (the budgets), the safe constructor for scalars."""

        def __init__(self, text: str) -> None:
            # libyaml reads bytes: its positions (in reader errors) are byte offsets.
            CParser.__init__(self, text.encode("utf-8"))
            _BudgetComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _BYTE_POSITIONS = True
else:  # pragma: no cover - libyaml is in every supported install; kept for a bare PyYAML
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _BudgetComposer, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BudgetComposer.__init__(self)
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


def _check_expansion(root: Node, source: str) -> None:
    """Refuse a recursive alias, nesting past MAX_DEPTH once aliases are expanded, and aliases
    that would add more than MAX_ALIAS_NODES nodes. Memoized per node: linear in the file."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) → (expanded size, height)
    active: set[int] = set()

    def walk(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise _fail(source, node.start_mark.line + 1, "(yaml)", "recursive alias: a node contains itself")
        got = memo.get(key)
        if got is None:
            active.add(key)
            size, height = 1, 1
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            for child in children:
                s, h = walk(child, depth + 1)
                size += s
                height = max(height, h + 1)
            active.discard(key)
            got = memo[key] = (size, height)
            if size - len(memo) > MAX_ALIAS_NODES:  # the first node whose aliases expand too far
                raise _fail(
                    source,
                    node.start_mark.line + 1,
                    "(yaml)",
                    f"aliases (*name) here would expand to {size} nodes, more than {MAX_ALIAS_NODES} "
                    "beyond the file's own: refused (an alias-expansion bomb?)",
                )
        if depth + got[1] - 1 > MAX_DEPTH:
            raise _fail(
                source,
                node.start_mark.line + 1,
                "(yaml)",
                f"nested more than {MAX_DEPTH} levels deep (aliases expanded)",
            )
        return got

    walk(root, 1)


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
        raise _fail(
            source,
            line,
            "(encoding)",
            f"character U+{ord(text[exc.start]):04X} is not text (a lone surrogate)",
        ) from None
    if size > MAX_CONFIG_BYTES:
        raise _fail(source, 1, "(file)", f"larger than {_size(MAX_CONFIG_BYTES)}: not read")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root, source)
            builder = _Builder(loader, source)
            return builder.build(root, ()), builder.lines
        return {}, {}
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, text, source)]) from None
    finally:
        loader.dispose()


class _Builder:
    """Node graph → plain data, recording lines, refusing duplicate and non-text keys."""

    def __init__(self, loader: _Loader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: LineMap = {}

    def build(self, n: Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, MappingNode):
            if n.tag != _MAP_TAG:
                raise self._error(n, loc, f"unsupported tag {n.tag} on a mapping")
            out: dict[str, Any] = {}
            first: dict[str, int] = {}
            for key_node, value_node in n.value:
                key = self._key(key_node, loc)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise self._error(
                        key_node,
                        (*loc, key),
                        f"duplicate key (first given at line {first[key]}; "
                        "YAML would silently keep the last)",
                    )
                first[key] = line
                self.lines[(*loc, key)] = line
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(n, SequenceNode):
            if n.tag != _SEQ_TAG:
                raise self._error(n, loc, f"unsupported tag {n.tag} on a sequence")
            return [self.build(item, (*loc, i)) for i, item in enumerate(n.value)]
        return self._scalar(n, loc)

    def _key(self, node: Node, loc: Loc) -> str:
        if not isinstance(node, ScalarNode):
            raise self._error(node, loc, "a key must be plain text, not a mapping or a sequence")
        if node.tag == _MERGE_TAG:
            raise self._error(node, loc, "merge keys (<<) are not supported: write the keys out")
        key = self._scalar(node, loc)
        if not isinstance(key, str):
            raise self._error(
                node, loc, f"key {node.value!r} reads as {type(key).__name__}, not text: quote it"
            )
        return key

    def _scalar(self, n: Node, loc: Loc) -> Any:
        if n.tag not in _SCALAR_TAGS:
            raise self._error(n, loc, f"unsupported tag {n.tag}")
        try:
            return self.loader.construct_object(n, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:  # e.g. a 13th month
            raise self._error(n, loc, f"cannot read value {getattr(n, 'value', '')!r}: {exc}") from None

    def _error(self, n: Node, loc: Loc, message: str) -> ConfigError:
        return _fail(self.source, n.start_mark.line + 1, loc, message)
