"""Test-only fault injection at named points of a run, chosen by the
environment: MLX_GROW_FAULT="kind@point:N", e.g. "kill@step:7" (SIGKILL before
global step 7), "kill@checkpoint:8" (SIGKILL halfway through writing the
step-8 checkpoint), "kill@grow:2" (during the growth event into stage 2),
"enospc@checkpoint:8" (disk full while writing it), "nan@step:5", "interrupt@step:3"
(Ctrl-C before global step 3), "kill@piece:3" (SIGKILL once the third part of a data
preparation is written).
Unset, it costs one dictionary lookup."""

import errno
import os
import signal


def armed(point: str, n: int) -> str | None:
    spec = os.environ.get("MLX_GROW_FAULT")
    if not spec:
        return None
    for item in spec.split(","):
        kind, _, where = item.partition("@")
        name, _, at = where.partition(":")
        if name == point and at.isascii() and at.isdigit() and int(at) == n:
            return kind
    return None


def maybe_fail(point: str, n: int):
    kind = armed(point, n)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if kind == "interrupt":
        raise KeyboardInterrupt
