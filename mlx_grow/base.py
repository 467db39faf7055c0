"""The bottom of the import graph: the user-error type and the strict
dataclass reader every config section uses."""

from dataclasses import fields


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
