"""The bottom of the import graph: the user-error type, the capped repr every
message shows values with, numbers in words, the value checks, the strict
dataclass reader every config section uses, and `opt`, the config field that
carries its help text (the one source of the config reference and the CLI's flag help)."""

import copy
import math
import reprlib
from dataclasses import MISSING, field, fields


class UserError(ValueError):
    """An expected, user-fixable error: the CLI prints its message (no traceback)
    and exits 2. Anything else is a bug and keeps its traceback."""


# A value shown in a message is cut to a few hundred characters: a config value may be
# a YAML alias bomb whose repr would not fit in memory (reprlib stops at these limits).
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 80, 80, 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 8


def brief(v, limit: int = 160) -> str:
    """repr(v), capped (depth, items, then `limit` characters): the one way a message shows a value."""
    try:
        text = _BRIEF.repr(v)
    except Exception:  # a hostile __repr__: say what it is
        return f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- numbers in words ---

_UNITS = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, None), (1e6, "M"), (1e3, "K"))


def human(n, digits: int = 1, giga: str = "B") -> str:
    """A count in short form: `269.7M`, `1.3B` (parameters and tokens, as the papers
    print them); `digits=2, giga="G"` for FLOPs (`1.23G`, `4.56P`). `–` for none."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    for div, unit in _UNITS:
        if abs(n) >= div:
            return f"{n / div:.{digits}f}{unit or giga}"
    return str(n) if isinstance(n, int) else f"{n:.0f}"


def size(n: float) -> str:
    """Bytes in binary units: `512 MiB`, `2.10 GiB`, `250.00 TiB`."""
    for unit, div in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


# --- value checks: each names the key and says what it must be ---

MAX_INT = 2**53  # beyond this a count is no count (and does not survive a float or an int64 on the way)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def whole(text: str) -> bool:
    """Whether `text` is a whole number in ASCII digits (`str.isdigit()` also takes `²`), at
    most 18 of them (past that no count fits)."""
    t = text.strip()
    return 0 < len(t) <= 18 and all("0" <= c <= "9" for c in t)


def need_int(key: str, v, lo: int | None = None, optional: bool = False):
    if optional and v is None:
        return
    if not _is_int(v) or (lo is not None and v < lo) or abs(v) > MAX_INT:
        what = "an integer" if lo is None else ("a positive integer" if lo == 1 else f"an integer >= {lo}")
        limit = " up to 2**53" if _is_int(v) and abs(v) > MAX_INT else ""
        raise UserError(f"{key} must be {what}{limit}, got {brief(v)}")


def need_number(key: str, v, lo: float | None = None, hi: float | None = None, open_lo: bool = False,
                open_hi: bool = False, optional: bool = False):
    if optional and v is None:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    if ok and lo is not None:
        ok = v > lo if open_lo else v >= lo
    if ok and hi is not None:
        ok = v < hi if open_hi else v <= hi
    if not ok:
        rng = []
        if lo is not None:
            rng.append(f"{'>' if open_lo else '>='} {lo}")
        if hi is not None:
            rng.append(f"{'<' if open_hi else '<='} {hi}")
        raise UserError(f"{key} must be a number{' ' + ' and '.join(rng) if rng else ''}, got {brief(v)}")


def need_bool(key: str, v):
    if not isinstance(v, bool):
        raise UserError(f"{key} must be true or false, got {brief(v)}")


def need_str(key: str, v, optional: bool = False):
    if not (isinstance(v, str) or (optional and v is None)):
        raise UserError(f"{key} must be a string, got {brief(v)}")


def need_choice(key: str, v, choices):
    if not isinstance(v, (str, int, float, type(None))) or v not in choices:
        raise UserError(f"{key} must be one of {', '.join(map(str, choices))}, got {brief(v)}")


def check_unicode(text: str, where: str = "") -> str:
    """`text`, refused when it holds a lone surrogate (a JSON "\\ud800" escape decodes to
    one): that is not valid Unicode, so it cannot be written as UTF-8 nor tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where + ': ' if where else ''}the text holds a lone surrogate (U+{ord(text[e.start]):04X}) "
                        f"at character {e.start}, which is not valid Unicode; remove or replace it") from None
    return text


def key_list(keys) -> str:
    """Mapping keys for a message (`a, b, c`): sorted, each capped, at most 8 then `…`."""
    shown = sorted(k[:40] if isinstance(k, str) else brief(k) for k in keys)
    return ", ".join(shown[:8]) + (" …" if len(shown) > 8 else "")


def strict_from_dict(cls, params: dict, where: str):
    """Build dataclass `cls` from `params`; an unknown key is an error that names it."""
    if not isinstance(params, dict):
        raise UserError(f"{where} must be a mapping of keys to values, got {brief(params)}")
    names = {f.name for f in fields(cls)}
    unknown = [k for k in params if k not in names]
    if unknown:
        raise UserError(
            f"unknown key(s) {key_list(unknown)} in {where}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    return cls(**params)


def opt(default=MISSING, help: str = "", **kw):
    """A dataclass field with its help text: `seed: int = opt(0, "Seed for ...")`.
    A list or dict default becomes a default_factory (a fresh copy per instance);
    without a default the field is required."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def field_help(cls, name: str) -> str:
    """The help text of field `name` of dataclass `cls` ("" when it has none)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")
