"""The MLX backend: check that one is installed, and on Linux give MLX's CPU
backend a fast BLAS before `mlx.core` loads.

The `mlx[cpu]` wheel links a reference BLAS (a 1024^3 float32 matmul runs at
2-6 GFLOP/s on a 2-core x86_64 VM). MLX resolves `cblas_sgemm` and friends when
`mlx.core` is first imported, so a library exporting those symbols that is
loaded earlier with RTLD_GLOBAL takes their place, in this process only:
Intel oneMKL from the `mkl` wheel (the `[cpu]` extra brings it on x86_64), or
the system's OpenBLAS (`apt-get install libopenblas0-pthread`). `import
mlx_grow` does this first thing, so the CLI, `python -c`, notebooks, pytest and
`mlx.launch` workers all get it. Loaded after `mlx.core` it has no effect: then
a warning says so, once.

MLX_GROW_BLAS picks the library: `mkl`, `openblas`, a path to a shared library
exporting the CBLAS and LAPACK symbols, or `off` (the bundled one). The BLAS
gets the cores of this process divided among the ranks that `mlx.launch` runs
on this host (MLX_GROW_BLAS_THREADS overrides; MKL_NUM_THREADS,
OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, when set, are left to the library),
so local ranks do not fight over cores. Nothing here runs on macOS (MLX uses Metal and Accelerate).
"""

import ctypes
import importlib.util
import json
import os
import sys
import warnings

OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# what load() found: {"library": name, "path": ..., "threads": n} or {"library": None, "why": ...}
loaded: dict = {"library": None, "why": "not loaded yet"}
_warned = False


def require_mlx():
    try:
        found = importlib.util.find_spec("mlx.core") is not None
    except ImportError:
        found = False
    if found:
        return
    if sys.platform == "darwin":
        how = "pip install mlx"
    else:
        how = "pip install 'mlx-grow[cpu]' (Linux CPU) or 'mlx-grow[cuda]' (NVIDIA GPU)"
    raise SystemExit(
        "mlx-grow needs an MLX backend, and none is installed.\n"
        f"Install one: {how}. Install only one backend per environment."
    )


def find_mkl() -> str | None:
    """libmkl_rt from the `mkl` wheel (installed under the environment's lib/)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("mkl").files or []
        except PackageNotFoundError:
            files = []
        for f in files:
            if f.name.startswith("libmkl_rt.so"):
                path = os.path.realpath(f.locate())
                if os.path.exists(path):
                    return path
    except Exception:  # a broken metadata record: fall back to the usual place
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"):
            path = os.path.join(prefix, "lib", name)
            if os.path.exists(path):
                return path
    return None


def find_openblas() -> str | None:
    for path in OPENBLAS_PATHS:
        if os.path.exists(path):
            return path
    return None


def local_ranks(env=None) -> int:
    """How many ranks `mlx.launch` runs on this host (1 outside it)."""
    env = os.environ if env is None else env
    if env.get("MLX_GROW_LOCAL_RANKS"):
        return max(1, int(env["MLX_GROW_LOCAL_RANKS"]))
    try:
        rank = int(env.get("MLX_RANK", ""))
    except ValueError:
        return 1
    hostfile = env.get("MLX_HOSTFILE")
    try:
        with open(hostfile) as f:
            hosts = json.loads(f.read() or "[]")
    except (OSError, TypeError, ValueError, RecursionError):
        hosts = []
    if isinstance(hosts, list) and 0 <= rank < len(hosts) and all(isinstance(h, list) for h in hosts):
        # the ring backend: one list of "ip:port" per rank; ranks sharing my IPs share my host
        def ips(h):
            return frozenset(str(a).rsplit(":", 1)[0] for a in h)

        mine = ips(hosts[rank])
        return max(1, sum(1 for h in hosts if ips(h) == mine))
    return 1  # other backends place one rank per host or GPU


def blas_threads(env=None) -> int | None:
    """BLAS threads for this process: MLX_GROW_BLAS_THREADS, else None when the
    user set the library's own variable, else the cores over the local ranks."""
    env = os.environ if env is None else env
    if env.get("MLX_GROW_BLAS_THREADS"):
        return max(1, int(env["MLX_GROW_BLAS_THREADS"]))
    if any(env.get(k) for k in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // local_ranks(env))


def fast_blas_mapped() -> str | None:
    """The fast BLAS mapped into this process, if any (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for name in ("libmkl_rt", "libopenblas"):
        if name in maps:
            return name
    return None


def load_fast_blas() -> dict:
    """Load a fast BLAS for MLX's CPU backend (Linux; before mlx.core). Returns `loaded`."""
    global _warned
    if not sys.platform.startswith("linux"):
        loaded.update(library=None, why="not Linux")
        return loaded
    choice = os.environ.get("MLX_GROW_BLAS", "auto").strip().lower()
    if choice in ("off", "0", "none", "bundled"):
        loaded.update(library=None, why="MLX_GROW_BLAS=off")
        return loaded
    if loaded["library"]:
        return loaded
    if "mlx.core" in sys.modules:
        have = fast_blas_mapped()
        if have:
            loaded.update(library=have, path=None, threads=None, why="loaded before mlx_grow")
            return loaded
        loaded.update(library=None, why="mlx.core was imported before mlx_grow")
        if not _warned and (find_mkl() or find_openblas()):
            _warned = True
            warnings.warn(
                "mlx.core was imported before mlx_grow, so MLX's CPU backend keeps its slow bundled BLAS "
                "(about 30x slower matmuls). Import mlx_grow before mlx.core (first thing in the script or "
                "notebook), or set MLX_GROW_BLAS=off to silence this.", RuntimeWarning, stacklevel=3)
        return loaded
    candidates = []
    if choice in ("auto", "mkl"):
        candidates.append(("mkl", find_mkl()))
    if choice in ("auto", "openblas"):
        candidates.append(("openblas", find_openblas()))
    if choice not in ("auto", "mkl", "openblas"):
        candidates.append((os.path.basename(choice), choice))
    threads = blas_threads()
    for name, path in candidates:
        if not path:
            continue
        try:
            if name == "mkl":
                # Intel's OpenMP, sized to this rank's share of the cores; idle BLAS threads sleep
                # at once instead of spinning (MLX runs its own work between the matmuls)
                os.environ.setdefault("MKL_THREADING_LAYER", "INTEL")
                os.environ.setdefault("KMP_BLOCKTIME", "0")
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            loaded.update(library=None, why=f"{path}: {e}")
            continue
        if threads is not None:
            set_threads(lib, name, threads)
        loaded.update(library=name, path=path, threads=threads, why="")
        return loaded
    if choice != "auto":
        loaded.update(library=None, why=f"MLX_GROW_BLAS={choice}: library not found")
    else:
        loaded.update(library=None, why="no fast BLAS installed (pip install 'mlx-grow[cpu]' brings mkl)")
    return loaded


def set_threads(lib, name: str, n: int):
    for fn in ("MKL_Set_Num_Threads", "openblas_set_num_threads"):
        f = getattr(lib, fn, None)
        if f is not None:
            f.argtypes = [ctypes.c_int]
            f(int(n))
            return
