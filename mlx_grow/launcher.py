"""Entry point of the `mlx-grow` command.

On Linux the mlx[cpu] wheel's bundled BLAS is far slower than OpenBLAS. When
OpenBLAS is installed and not yet preloaded, re-exec the process with
LD_PRELOAD set before MLX loads. MLX_GROW_NO_OPENBLAS=1 turns this off.
"""

import os
import sys

OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


def find_openblas():
    for path in OPENBLAS_PATHS:
        if os.path.exists(path):
            return path
    return None


def openblas_env(env=None):
    """Return a copy of `env` with OpenBLAS preloaded (Linux only, when present)."""
    env = dict(os.environ if env is None else env)
    lib = find_openblas()
    if not sys.platform.startswith("linux") or lib is None or env.get("MLX_GROW_NO_OPENBLAS"):
        return env
    preload = env.get("LD_PRELOAD", "")
    if "libopenblas" not in preload:
        env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    return env


def reexec_argv(args) -> list:
    """The command that runs mlx-grow again without the working directory on
    sys.path (`python -m` would put it first, so a yaml.py there would run)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "mlx_grow.cli", *args]
    code = "import sys; sys.path.pop(0); from mlx_grow.cli import app; app(prog_name='mlx-grow')"
    return [sys.executable, "-c", code, *args]


def main():
    env = openblas_env()
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD") and "mlx.core" not in sys.modules:
        os.execve(sys.executable, reexec_argv(sys.argv[1:]), env)
    from mlx_grow.cli import app

    app(prog_name="mlx-grow")


if __name__ == "__main__":
    main()
