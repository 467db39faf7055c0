"""The bottom of the import graph: the user-error type, the strict dataclass
reader every config section uses, and `opt`, the config field that carries its
help text (the one source of the config reference and the CLI's flag help)."""

import copy
from dataclasses import MISSING, field, fields


class UserError(ValueError):
    """An expected, user-fixable error: the CLI prints its message (no traceback)
    and exits 2. Anything else is a bug and keeps its traceback."""


def strict_from_dict(cls, params: dict, where: str):
    """Build dataclass `cls` from `params`; an unknown key is an error that names it."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise UserError(
            f"unknown key(s) {', '.join(unknown)} in {where}; "
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
