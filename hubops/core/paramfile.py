"""Reading parameter files and the files they name, safely, whatever is put in front of hubops.

A parameter file is small, text, UTF-8, a plain tree of a few dozen keys. Anything else is refused
*by construction*, before it can cost time or memory, with one short message naming the file, the
line or the key, and what to do:

- the file must be a regular file (not a device, a pipe or a folder) of at most `MAX_BYTES`; the
  size is checked before a byte is parsed, and reading stops at the cap even when the size lied;
- UTF-8 only: a bad byte is reported with its line and the key it sits under;
- the YAML tree is capped while it is composed: `MAX_DEPTH` levels of nesting, `MAX_NODES` nodes
  as written, and `MAX_EXPANDED` nodes once every alias is expanded (an alias bomb refers to
  the same anchors again and again: its expanded size is counted without expanding it);
- a key given twice in one mapping is refused with both lines (YAML itself keeps the last);
- the files a parameter file names (the userlist, ``{file: PATH}`` secrets, certificates) are read
  through `read_small`: regular files only, capped, text only.

Messages never repeat a value that looks like a secret (`shown`, `scrub`): a token pasted under
the wrong key is named by its key, not printed.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ParameterError

MAX_BYTES = 256 * 1024          # the production example is under 8 KiB
MAX_DEPTH = 24                  # the deepest real key (hosts.managers[0].tls.ca) is 5 levels down
MAX_NODES = 20_000              # nodes as written (scalars, lists, mappings, aliases)
MAX_EXPANDED = 50_000           # nodes once aliases are expanded (what validation would walk)
MAX_USERLIST_BYTES = 1024 * 1024  # 1 MiB: tens of thousands of users
MAX_SECRET_BYTES = 64 * 1024    # a PEM key or an OAuth secret is a few KiB at most
MAX_PEM_BYTES = 4 * 1024 * 1024  # CA bundles (the system's is about 200 KiB)
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """Raised inside the loader when a cap is reached; turned into a ParameterError."""

    def __init__(self, msg: str, line: Optional[int] = None):
        super().__init__(msg)
        self.msg, self.line = msg, line


class _CappedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting depth and nodes while it composes (it recurses per level)."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Optional[Node], index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels; a parameter file is a shallow tree "
                               "(see parameters/production.example.yaml)", _line(self.peek_event()))
            if self._nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values; a parameter file has a few dozen "
                               "(see parameters/production.example.yaml)", _line(self.peek_event()))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(event_or_node: Any) -> Optional[int]:
    mark = getattr(event_or_node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


# -- reading files --------------------------------------------------------------------------------

def read_small(path: Path, limit: int, *, where: str, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. `where` prefixes the message
    ("FILE: auth.userlist"), `what` says what the file should be ("the userlist")."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ParameterError(f"{where}: cannot read {path}: {e.strerror}; fix the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ParameterError(f"{where}: {path} is a folder; give the path of {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ParameterError(f"{where}: {path} is not a regular file (a device, a pipe or a socket); "
                             f"give the path of {what}, a plain file")
    if st.st_size > limit:
        raise ParameterError(f"{where}: {path} is {_size(st.st_size)}, more than {what} can be "
                             f"({_size(limit)} at most); check that it is the right file")
    try:
        # O_NONBLOCK: if the path was swapped for a pipe since stat, open does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ParameterError(f"{where}: cannot read {path}: {e.strerror}") from None
    if len(data) > limit:
        raise ParameterError(f"{where}: {path} is more than {_size(limit)}; check that it is the right file")
    return data


def read_text(path: Path, limit: int, *, where: str, what: str, show_line: bool = True) -> str:
    """`read_small`, decoded as UTF-8; a binary or non-UTF-8 file is refused (its line named
    when `show_line`; never its content)."""
    data = read_small(path, limit, where=where, what=what)
    if b"\0" in data:
        raise ParameterError(f"{where}: {path} is a binary file (it holds NUL bytes); give {what}, a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        nl = data[:e.start].count(b"\n") + 1
        at = f" (line {nl})" if show_line else ""
        raise ParameterError(f"{where}: {path} is not UTF-8 text{at}{_utf16_hint(data)}; "
                             f"save {what} as UTF-8") from None


def _utf16_hint(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return ": it is UTF-16, as some Windows editors write"
    return ""


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


# -- parsing the parameter file -------------------------------------------------------------------

def load_yaml(source: Path) -> tuple[Any, bytes]:
    """The parameter file's data and raw bytes, or a ParameterError saying what is wrong where."""
    raw = read_small(source, MAX_BYTES, where=str(source), what="a parameter file")
    if _utf16_hint(raw):
        raise ParameterError(f"{source}: not UTF-8{_utf16_hint(raw)}; save the file as UTF-8")
    if b"\0" in raw:
        line = raw[:raw.index(b"\0")].count(b"\n") + 1
        raise ParameterError(f"{source}: line {line}: a NUL byte; this is a binary file, not a YAML parameter file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        key = _key_at_line(raw.decode("utf-8", errors="replace"), line)
        under = f" (under {key})" if key else ""
        raise ParameterError(
            f"{source}: line {line}, column {col}{under}: byte 0x{raw[e.start]:02x} is not UTF-8"
            f"{_utf16_hint(raw)}; save the file as UTF-8 (most often a name or a comment typed in "
            "another encoding)") from None
    node = _compose(source, text)
    if node is None:
        return None, raw
    _check_expansion(source, node)
    _check_duplicates(source, node)
    loader = _CappedLoader(text)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ParameterError(_yaml_message(source, e)) from None
    except (TypeError, ValueError, RecursionError):  # e.g. an unhashable key such as [a, b]: c
        raise ParameterError(f"{source}: line {_line(node)}: a key that is not a plain name (a list or a "
                             "mapping used as a key); keys are names such as hub or https_port") from None
    finally:
        loader.dispose()
    return data, raw


def _compose(source: Path, text: str) -> Optional[Node]:
    loader: Optional[_CappedLoader] = None
    try:
        loader = _CappedLoader(text)  # the reader refuses control characters here already
        return loader.get_single_node()
    except _Refused as e:
        raise ParameterError(f"{source}: line {e.line}: {e.msg}") from None
    except yaml.YAMLError as e:
        raise ParameterError(_yaml_message(source, e, text)) from None
    except RecursionError:  # not reached with MAX_DEPTH; a last guard, never a traceback
        raise ParameterError(f"{source}: nested too deep; a parameter file is a shallow tree") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_message(source: Path, e: yaml.YAMLError, text: str = "") -> str:
    """PyYAML's error without its snippet of the file (the snippet could show a secret)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = e.problem or e.context or "cannot be read"
        ctx = f" ({e.context}, line {e.context_mark.line + 1})" if e.context and e.problem and e.context_mark else ""
        return f"{source}: {where}not valid YAML: {what}{ctx}; fix the file (an editor with YAML support shows where)"
    if isinstance(e, yaml.reader.ReaderError):
        line = text[:e.position].count("\n") + 1 if text else None
        key = _key_at_line(text.replace(chr(e.character), " "), line) if line else None
        where = f"line {line}{f' (under {key})' if key else ''}: " if line else ""
        return (f"{source}: {where}not valid YAML: character #x{e.character:04x} is not allowed in YAML "
                "(a control character); remove it")
    return f"{source}: not valid YAML: {type(e).__name__}; fix the file"


def _check_expansion(source: Path, root: Node) -> None:
    """Refuse alias bombs and self-referring anchors: the size and depth of the tree as the
    validation would see it, each shared node counted once per reference but visited once."""
    memo: dict[int, tuple[int, int]] = {}     # id(node) -> (expanded size, height)
    active: set[int] = set()

    def visit(node: Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (counting aliases)", _line(node))
        key = id(node)
        if key in memo:
            size, height = memo[key]
            if depth + height > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels (counting aliases)", _line(node))
            return memo[key]
        if key in active:
            raise _Refused("an alias refers to the anchor it is inside of (a loop); remove the alias", _line(node))
        active.add(key)
        size, height = 1, 0
        children: Iterable[Node] = ()
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        for child in children:
            s, h = visit(child, depth + 1)
            size += s
            height = max(height, h + 1)
            if size > MAX_EXPANDED:
                raise _Refused(f"expands to more than {MAX_EXPANDED} values through its aliases (&anchor / "
                               "*alias): remove the aliases that repeat others", _line(node))
        active.discard(key)
        memo[key] = (size, height)
        return size, height

    try:
        visit(root, 1)
    except _Refused as e:
        raise ParameterError(f"{source}: line {e.line}: {e.msg}") from None


def _check_duplicates(source: Path, root: Node) -> None:
    seen: set[int] = set()

    def walk(node: Node, path: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, f"{path}[{i}]")
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], Node] = {}
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.tag != MERGE_TAG:
                    ident = (k.tag, k.value)
                    if ident in first:
                        raise ParameterError(
                            f"{source}: {_join(path, k.value)}: given twice, on line {_line(first[ident])} and "
                            f"line {_line(k)}; keep one (YAML would silently use the last)")
                    first[ident] = k
                walk(v, _join(path, k.value if isinstance(k, ScalarNode) else "?"))

    walk(root, "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _key_at_line(text: str, line: int) -> Optional[str]:
    """The key path whose key or value spans `line` (1-based), for messages; None when unknown."""
    try:
        root = _CappedLoader(text).get_single_node()
    except Exception:  # noqa: BLE001 - a best-effort hint for a message, nothing more
        return None
    best: Optional[str] = None

    def walk(node: Node, path: str, depth: int) -> None:
        nonlocal best
        if depth > MAX_DEPTH:
            return
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if k.start_mark.line + 1 <= line <= max(v.end_mark.line + 1, k.end_mark.line + 1):
                    p = _join(path, k.value if isinstance(k, ScalarNode) else "?")
                    best = p
                    walk(v, p, depth + 1)
        elif isinstance(node, SequenceNode):
            for i, v in enumerate(node.value):
                if v.start_mark.line + 1 <= line <= v.end_mark.line + 1:
                    best = f"{path}[{i}]"
                    walk(v, f"{path}[{i}]", depth + 1)

    if root is not None:
        walk(root, "", 0)
    return best


# -- not echoing secrets --------------------------------------------------------------------------

_URL_NO_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://([^\s:@/]+@)?[^\s@]*$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def looks_secret(value: str) -> bool:
    """Whether a value should never be printed: a PEM block, a token-like string (mixed letters,
    digits and signs, or a long hex or base64 run), a URL with a password in it."""
    v = value.strip()
    if "-----BEGIN" in v or "PRIVATE KEY" in v:
        return True
    if any(c.isspace() for c in v):  # a line or a sentence: any one word of it
        return any(looks_secret(word) for word in v.split())
    if len(v) < 8:
        return False
    if "://" in v:
        return not _URL_NO_PASSWORD.match(v)
    if v.startswith(("/", "./", "../", "~")):
        return False
    try:
        ipaddress.ip_network(v, strict=False)
        return False  # an address or a subnet
    except ValueError:
        pass
    lower, upper = any(c.islower() for c in v), any(c.isupper() for c in v)
    digit, alpha = any(c.isdigit() for c in v), any(c.isalpha() for c in v)
    odd = any(not c.isalnum() and c not in ".-_@:/+" for c in v)   # signs names and addresses do not use
    if len(v) >= 16 and _HEX.match(v) and digit and alpha:
        return True   # hex tokens (OAuth client secrets, API tokens)
    if len(v) >= 24 and v.isalnum() and digit and alpha:
        return True
    if upper and lower and (digit or odd or "_" in v or "+" in v or "/" in v):
        return True   # mixed-case tokens, base64, passwords
    if odd and alpha and digit:
        return True
    return False


def shown(value: Any) -> str:
    """`repr(value)`, or a placeholder when the value looks like a secret."""
    text = str(value)
    if isinstance(value, str) and looks_secret(text):
        return f"<a value of {len(text)} characters, not shown: it looks like a secret>"
    return repr(value)


def scalars(data: Any, limit: int = MAX_EXPANDED) -> list[str]:
    """Every string key and value in a parsed parameter file (each shared object once)."""
    out: list[str] = []
    seen: set[int] = set()
    stack = [data]
    while stack and len(out) < limit:
        obj = stack.pop()
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, (dict, list)):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            else:
                stack.extend(obj)
    return out


_ENV_SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD", re.IGNORECASE)
_ENV_LOCATION = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)


def env_secret_values() -> list[str]:
    """Values of environment variables named like secrets (what the redactor also hides)."""
    return [v for k, v in os.environ.items()
            if _ENV_SECRET.search(k) and not _ENV_LOCATION.search(k) and len(v.strip()) >= 8]


def scrub(message: str, data: Any, known: Iterable[str] = ()) -> str:
    """`message` with every secret-looking value of `data`, and every `known` secret, hidden."""
    hide = {s for s in scalars(data) if looks_secret(s)}
    hide.update(k.strip() for k in known if k and len(k.strip()) >= 8)
    for value in sorted(hide, key=len, reverse=True):
        for form in (repr(value), value):
            message = message.replace(form, f"<a value of {len(value)} characters, not shown: it looks like a secret>")
    return message


# -- unknown keys ---------------------------------------------------------------------------------

def known_keys(model: type, loc: tuple) -> list[str]:
    """The keys a pydantic model accepts at the mapping that holds `loc[-1]`."""
    current: Any = model
    for part in loc[:-1]:
        current = _unwrap(current)
        if isinstance(part, int) or current is None:
            if typing.get_origin(current) in (list, tuple):
                current = typing.get_args(current)[0]
                continue
            if typing.get_origin(current) is dict:
                current = typing.get_args(current)[1]
                continue
            return []
        fields = getattr(current, "model_fields", None)
        if fields is None:
            if typing.get_origin(current) is dict:
                current = typing.get_args(current)[1]
                continue
            return []
        if part not in fields:
            return []
        current = fields[part].annotation
    current = _unwrap(current)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def suggest(key: Any, known: list[str]) -> str:
    """', did you mean X?' for a mistyped key, or the list of known keys."""
    if not known:
        return ""
    close = difflib.get_close_matches(str(key).lower(), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; the keys here are: {', '.join(known)}"
