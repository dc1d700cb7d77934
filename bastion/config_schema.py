"""YAML nodes that know where they sit: the validation machinery behind config.py.

:func:`read_yaml` composes a file into nodes (never Python objects), so every
value keeps its line. :class:`Node` turns each node into a checked value or a
:class:`~bastion.errors.ConfigError` naming ``file:line``, the dotted key path
and what was expected. The ``parse_*`` helpers are pure and raise ValueError;
:func:`read_secret_file` is the one place a secret's value is read from disk.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import yaml

from bastion.errors import ConfigError

T = TypeVar("T")

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _BOOL, _NULL, _MERGE = (_TAG + t for t in ("str", "int", "bool", "null", "merge"))
_KINDS = {_STR: "a string", _INT: "a number", _TAG + "float": "a number", _BOOL: "true/false", _NULL: "null"}

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION = re.compile("".join(f"(?:(?P<{unit}>{_NUMBER.pattern}){unit})?" for unit in "dhms"))
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # turns int and bool scalars into values


def parse_duration(text: str) -> float:
    """Seconds in "90", "30s", "15m", "1h30m", "1d" (units in d, h, m, s order); raises ValueError."""
    if _NUMBER.fullmatch(text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError('expected a duration such as "30s", "15m", "1h30m", "1d" or a number of seconds')
    return sum(float(v) * _UNIT_SECONDS[unit] for unit, v in match.groupdict().items() if v)


def format_duration(seconds: float) -> str:
    """The shortest "1h30m"-style spelling of a whole number of seconds, for messages."""
    if seconds != int(seconds) or seconds == 0:
        return f"{seconds:g}s"
    parts, rest = [], int(seconds)
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, int(size))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_address(text: str) -> tuple[str, int]:
    """Split "host:port" or "[IPv6]:port" into (host, port); raises ValueError."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError('expected "[IPv6]:port"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ValueError(f"expected an IPv6 address between the brackets, got {host!r}") from e
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f'expected "host:port" or "[IPv6]:port", got {text!r}')
        if ":" in host:
            raise ValueError(f'an IPv6 address needs brackets: "[{host}]:{port}"')
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"expected a host name or IP address, got {host!r}")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"expected a port number 0..65535, got {port!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_url(text: str, *, https_only: bool = False) -> str:
    """Check an http(s) URL; with https_only, plain http passes only on a loopback host."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port  # urlsplit validates the port only when it is read
    except ValueError as e:
        raise ValueError(f"expected an http(s) URL: {e}") from e
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f'expected an "https://host" URL, got {text!r}')
    if https_only and parts.scheme == "http" and not is_loopback(host):
        raise ValueError("must use https (plain http is accepted only on a loopback host: 127.0.0.0/8, ::1, localhost)")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("expected a URL without credentials, query or fragment")
    return text


def parse_webhook_url(text: str) -> str:
    """Check an http(s) URL to POST to; a query is allowed (some receivers carry their token there).

    The messages never quote the URL: a webhook URL often carries its token.
    """
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port  # urlsplit validates the port only when it is read
    except ValueError as e:
        raise ValueError("expected an http(s) URL with a valid host and port") from e
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError('expected an http(s) URL such as "https://hooks.example.com/..."')
    if parts.username is not None or parts.fragment:
        raise ValueError("expected a URL without credentials or fragment")
    return text


def parse_link(text: str) -> str:
    """Check a link template with an optional ``{id}`` placeholder, e.g. ``https://bastion/approvals/{id}``."""
    try:
        example = text.format(id="r-0123456789")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError("expected {id} as the only placeholder (write {{ and }} for literal braces)") from e
    parse_webhook_url(example)
    return text


def read_yaml(file: str) -> Node:
    """Compose a YAML file into its root :class:`Node`; every failure is a ConfigError."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(file, None, "", f"cannot read the configuration file: {e.strerror}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(file, line, "", "invalid UTF-8 text") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(file, e) from e
    except yaml.reader.ReaderError as e:  # a control character; its str names only the character
        raise ConfigError(file, text.count("\n", 0, e.position) + 1, "", f"invalid YAML: {e}") from e
    if root is None:
        raise ConfigError(file, 1, "", "the file is empty; expected a mapping with listen, state_dir and identity")
    return Node(file, root, "")


def _yaml_error(file: str, e: yaml.MarkedYAMLError) -> ConfigError:
    # Only problem and context: str(e) would quote the offending line, which may hold a secret.
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark is not None else None
    detail = e.problem or "syntax error"
    return ConfigError(file, line, "", f"invalid YAML: {detail}" + (f" ({e.context})" if e.context else ""))


class Node:
    """A YAML node with its file, its dotted key path and the line of the key that holds it."""

    def __init__(self, file: str, node: yaml.Node, key: str, key_line: int | None = None) -> None:
        self.file = file
        self.node = node
        self.key = key
        self.key_line = key_line if key_line is not None else self.line

    @property
    def line(self) -> int:
        """1-based line where the value starts."""
        return int(self.node.start_mark.line) + 1

    def error(self, expected: str, *, at_key: bool = False) -> ConfigError:
        """A ConfigError for this value (or, with at_key, for the line of its key)."""
        return ConfigError(self.file, self.key_line if at_key else self.line, self.key, expected)

    def _child_key(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def _got(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return _KINDS.get(self.node.tag, f"a value tagged {self.node.tag}")

    def _expect(self, what: str) -> ConfigError:
        return self.error(f"expected {what}, got {self._got()}")

    @property
    def is_null(self) -> bool:
        """True for an explicit or empty null."""
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == _NULL

    @property
    def is_mapping(self) -> bool:
        """True when the node is a mapping."""
        return isinstance(self.node, yaml.MappingNode)

    def pairs(self, what: str = "a mapping") -> list[tuple[str, Node]]:
        """The (key, value) pairs of a mapping, in file order; duplicate keys are errors."""
        if not isinstance(self.node, yaml.MappingNode):
            raise self._expect(what)
        seen: dict[str, int] = {}
        result = []
        for key_node, value_node in self.node.value:
            key_line = int(key_node.start_mark.line) + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                raise ConfigError(self.file, key_line, self.key, "expected keys to be plain strings")
            if key_node.tag == _MERGE:
                raise ConfigError(self.file, key_line, self.key, "YAML merge keys (<<) are not supported")
            name = str(key_node.value)
            child = Node(self.file, value_node, self._child_key(name), key_line)
            if name in seen:
                raise child.error(f"duplicate key (first at line {seen[name]})", at_key=True)
            seen[name] = key_line
            result.append((name, child))
        return result

    def fields(
        self, allowed: Iterable[str], required: Iterable[str] = (), unsupported: Iterable[str] = ()
    ) -> dict[str, Node]:
        """A mapping with fixed keys: unknown, unsupported and missing keys are errors."""
        allowed = tuple(allowed)
        result = {}
        for name, child in self.pairs():
            if name in unsupported:
                raise child.error("not supported yet in this version; remove it", at_key=True)
            if name not in allowed:
                raise child.error(f"unknown key; expected one of: {', '.join(sorted(allowed))}", at_key=True)
            result[name] = child
        for name in required:
            if name not in result:
                raise ConfigError(self.file, self.key_line, self._child_key(name), "required key is missing")
        return result

    def items(self) -> list[Node]:
        """The elements of a list, each keyed ``key[i]``."""
        if not isinstance(self.node, yaml.SequenceNode):
            raise self._expect("a list")
        return [Node(self.file, n, f"{self.key}[{i}]") for i, n in enumerate(self.node.value)]

    def text(self) -> str:
        """A string (quote numbers and booleans in YAML to make them strings)."""
        if not isinstance(self.node, yaml.ScalarNode) or self.node.tag != _STR:
            raise self._expect("a string")
        return str(self.node.value)

    def name(self) -> str:
        """A non-empty string without surrounding whitespace."""
        value = self.text()
        if not value or value != value.strip():
            raise self.error("expected a non-empty string without surrounding spaces")
        return value

    def labels(self) -> dict[str, str]:
        """A mapping of non-empty label names to scalar values (as written)."""
        labels = {}
        for key, value in self.pairs("a mapping of label names to values"):
            if not key.strip():
                raise value.error("label names must not be empty", at_key=True)
            labels[key] = value.scalar_text()
        return labels

    def scalar_text(self) -> str:
        """Any non-null scalar, as the text written in the file (for labels)."""
        if not isinstance(self.node, yaml.ScalarNode) or self.is_null:
            raise self._expect("a string")
        return str(self.node.value)

    def names(self, *, non_empty: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings."""
        values = tuple(item.name() for item in self.items())
        if non_empty and not values:
            raise self.error("expected at least one entry")
        return values

    def integer(self, minimum: int = 1) -> int:
        """An integer no smaller than minimum."""
        if not isinstance(self.node, yaml.ScalarNode) or self.node.tag != _INT:
            raise self._expect("an integer")
        value = int(_CONSTRUCTOR.construct_yaml_int(self.node))
        if value < minimum:
            raise self.error(f"expected an integer >= {minimum}, got {value}")
        return value

    def flag(self) -> bool:
        """true or false."""
        if not isinstance(self.node, yaml.ScalarNode) or self.node.tag != _BOOL:
            raise self._expect("true or false")
        return bool(_CONSTRUCTOR.construct_yaml_bool(self.node))

    def duration(self, *, positive: bool = True) -> float:
        """Seconds, from "30s", "1h30m" or a plain number."""
        if not isinstance(self.node, yaml.ScalarNode) or self.node.tag not in (_STR, _INT, _TAG + "float"):
            raise self._expect('a duration such as "30s", "15m" or "1h"')
        seconds = self.parse(parse_duration, str(self.node.value))
        if positive and seconds <= 0:
            raise self.error("expected a duration greater than zero")
        return seconds

    def choice(self, choices: Iterable[str]) -> str:
        """One string of a fixed set."""
        choices = tuple(choices)
        value = self.text()
        if value not in choices:
            raise self.error(f"expected one of: {', '.join(choices)}; got {value!r}")
        return value

    def parse(self, parser: Callable[[str], T], text: str | None = None) -> T:
        """Apply a ValueError-raising parser to this string and turn its message into a ConfigError."""
        try:
            return parser(self.text() if text is None else text)
        except ValueError as e:
            raise self.error(str(e)) from e


def read_secret_file(path: Path, what: str) -> str:
    """A secret file's text minus one trailing newline; refuses files others can read. ``what`` names it in errors."""
    try:
        # O_NONBLOCK so that a FIFO in place of the file cannot hang the daemon.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(str(path), None, what, f"cannot read the secret file: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), None, what, "expected a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(str(path), None, what, "must not be readable by group or others (chmod 600)")
        data = f.read()
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), None, what, "expected UTF-8 text") from e
    value = value.removesuffix("\n").removesuffix("\r") if value.endswith("\n") else value
    if not value:
        raise ConfigError(str(path), None, what, "the secret file is empty")
    return value
