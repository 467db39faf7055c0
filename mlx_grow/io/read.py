"""Reading what a file holds, by one rule: a value, or one UserError line that
names the file; never a traceback, never unbounded work. Our own JSON files
(manifests, run.json, records, markers) and JSON inputs go through `read_json` /
`parse_json`; rows of .json/.jsonl files (task files, data rows) through
`json_rows`; configs and mapping files through `load_yaml` (strict: no duplicate
keys, bounded nesting, bounded alias fan-out); text through `read_text`."""

import codecs
import gzip
import json
from pathlib import Path
from typing import Iterator, Optional

import yaml

from mlx_grow.base import UserError, brief

MAX_DEPTH = 64  # nesting of a JSON value or a YAML document (ours stay under 8)
MAX_NODES = 100_000  # YAML nodes once every alias is expanded (a config has a few hundred)


def kind_of(value) -> str:
    """What a parsed value is, in words: `an object`, `a list`, `a string` …"""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _not_utf8(path, what: str, byte: int, offset: int) -> UserError:
    return UserError(f"cannot read {what} {path}: it is not UTF-8 text (invalid byte 0x{byte:02x} at offset "
                     f"{offset}); save it as UTF-8")


def read_text(path, what: str = "file") -> str:
    """The UTF-8 text of `path`; a file that is not UTF-8 is one line naming it."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, what, data[e.start], e.start) from None


def opener(path):
    """`open`, or `gzip.open` for a `.gz` file (read as the bytes it holds)."""
    return gzip.open if Path(path).name.endswith(".gz") else open


def utf8_error(path) -> Optional[int]:
    """The byte offset of the first invalid UTF-8 byte in a file (uncompressed, for a
    .gz), or None; read in blocks, never whole."""
    dec, pos = codecs.getincrementaldecoder("utf-8")("strict"), 0
    with opener(path)(path, "rb") as f:
        while block := f.read(1 << 24):
            held = len(dec.getstate()[0])  # bytes of a character cut by the last block
            try:
                dec.decode(block)
            except UnicodeDecodeError as e:
                return pos - held + e.start
            pos += len(block)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as e:
            return pos + e.start - len(e.object)
    return None


def json_rows(path, what: str = "file") -> Iterator:
    """The rows of a `.json` file (one JSON list) or of a `.jsonl` file (a JSON value a
    line, blank lines skipped; `.jsonl.gz` through gzip, read a line at a time). Bad
    JSON or bytes that are not UTF-8 are one line naming the file and the line."""
    path = Path(path)
    if path.name.endswith(".json"):
        rows = parse_json(read_text(path, what), str(path))
        if not isinstance(rows, list):
            raise UserError(f"{path} must hold a JSON list of rows (or be .jsonl, a row a line), got {kind_of(rows)}")
        yield from rows
        return
    try:
        with opener(path)(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield parse_json(line, f"{path} line {n}")
    except UnicodeDecodeError:
        offset = utf8_error(path)
        with opener(path)(path, "rb") as f:
            f.seek(offset)
            raise _not_utf8(path, what, f.read(1)[0], offset) from None


def check_depth(value, where: str, error=UserError, limit: int = MAX_DEPTH):
    """Refuse a value nested deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                raise error(f"{where} is nested deeper than {limit} levels: refusing it")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))


def parse_json(text, where: str, error=UserError):
    """json.loads for text from a file; errors (bad JSON, too deep) are one line."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} is nested deeper than {MAX_DEPTH} levels: refusing it") from None
    except ValueError as e:  # JSONDecodeError
        raise error(f"{where} is not valid JSON ({e})") from None
    check_depth(value, where, error)
    return value


NUMBER = "number"  # a `shaped` spec: an int or a float, not a bool


def shaped(v, spec) -> bool:
    """Whether a parsed JSON value has the shape `spec`: a type (int is not bool),
    NUMBER, a tuple of alternatives, [spec] (a list of those), {key: spec} (those
    keys at least; `key?`: when present), {"*": spec} (any keys, every value so)."""
    if spec is NUMBER:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(spec, type):
        return isinstance(v, spec) and not (spec is int and isinstance(v, bool))
    if isinstance(spec, tuple):
        return any(shaped(v, s) for s in spec)
    if isinstance(spec, list):
        return isinstance(v, list) and all(shaped(x, spec[0]) for x in v)
    if "*" in spec:
        return isinstance(v, dict) and all(shaped(x, spec["*"]) for x in v.values())
    if not isinstance(v, dict):
        return False
    for k, s in spec.items():
        key = k.removesuffix("?")
        if key in v:
            if not shaped(v[key], s):
                return False
        elif key == k:
            return False
    return True


def read_json(path, kind=dict, error=UserError, fix: str = "", word: str = "damaged", shape=None):
    """The JSON value in `path` (one of our own files), of type `kind` (None: any)
    and, when given, of `shape` (see `shaped`). Anything else is one line:
    `PATH is damaged (why); fix`. A missing file is the caller's to handle (the
    OSError passes)."""
    path = Path(path)
    data = path.read_bytes()
    end = f"; {fix}" if fix else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is {word} (not UTF-8 text: invalid byte at offset {e.start}){end}") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{path} is {word} (nested deeper than {MAX_DEPTH} levels){end}") from None
    except ValueError as e:
        raise error(f"{path} is {word} (not valid JSON: {e}){end}") from None
    try:
        check_depth(value, str(path))
    except UserError:
        raise error(f"{path} is {word} (nested deeper than {MAX_DEPTH} levels){end}") from None
    if kind is not None and not isinstance(value, kind):
        want = kind_of(kind()) if isinstance(kind, type) else " or ".join(kind_of(k()) for k in kind)
        raise error(f"{path} is {word} (it holds {kind_of(value)}, not {want}){end}")
    if shape is not None and not shaped(value, shape):
        raise error(f"{path} is {word} (an entry is missing or of the wrong type){end}")
    return value


# --- YAML ---


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {brief(key)}",
                                                                key_node.start_mark)
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeConstructor refuses it below
                    pass
        return super().construct_mapping(node, deep)


def _children(node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root, where: str):
    """Refuse a document whose aliases expand to more than MAX_NODES nodes, or
    deeper than MAX_DEPTH, or into a cycle: the node graph is walked once, each
    shared node counted with its expanded size (no expansion happens here)."""
    size, deep, open_ = {}, {}, set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        k = id(node)
        if done:
            kids = _children(node)
            size[k] = 1 + sum(size[id(c)] for c in kids)
            deep[k] = 1 + max((deep[id(c)] for c in kids), default=0)
            open_.discard(k)
            if size[k] > MAX_NODES:
                raise UserError(f"{where}: its aliases expand to more than {MAX_NODES:,} values (line "
                                f"{node.start_mark.line + 1}): refusing it (an alias bomb?)")
            if deep[k] > MAX_DEPTH:
                raise UserError(f"{where}: its aliases nest deeper than {MAX_DEPTH} levels (line "
                                f"{node.start_mark.line + 1}): refusing it")
            continue
        if k in size:
            continue
        open_.add(k)
        stack.append((node, True))
        for c in _children(node):
            if id(c) in open_:
                raise UserError(f"{where}: an alias refers to a value that contains it (line "
                                f"{c.start_mark.line + 1}): refusing it")
            if id(c) not in size:
                stack.append((c, False))


def yaml_problem(e: yaml.YAMLError) -> str:
    """A PyYAML error on one line: `problem (line L, column C)`."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())


def load_yaml(text: str, where: str):
    """The value of one YAML document (None when it is empty), loaded safely and
    strictly: duplicate keys, nesting past MAX_DEPTH and alias fan-out past
    MAX_NODES are refused with one line naming `where`."""
    try:
        loader = _StrictLoader(text)
    except yaml.YAMLError as e:  # a character YAML does not allow
        raise UserError(f"{where} is not valid YAML: {yaml_problem(e)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML: {yaml_problem(e)}") from None
    except RecursionError:  # a guard: the checks above stop well before Python's limit
        raise UserError(f"{where} is nested too deeply: refusing it") from None
    finally:
        loader.dispose()
