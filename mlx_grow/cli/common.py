"""The Typer apps, the consoles and the one error rule every command shares."""

import errno
import logging

import typer
from rich.console import Console, ConsoleDimensions

from mlx_grow.base import UserError

TOKENIZER_MARKER = "mlx_grow_tokenizer.json"  # mlx_grow.tokenizer.MARKER, without importing tokenizers here

app = typer.Typer(
    help="Grow, compose, run and convert language models on a frozen input substrate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Build, train and inspect tokenizers.", no_args_is_help=True)
substrate_app = typer.Typer(help="Build and inspect input substrates.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare token shards and inspect corpora.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert checkpoints to and from PyTorch / Hugging Face.", no_args_is_help=True)


def _version(value: bool):
    if value:
        from mlx_grow import __version__

        print(f"mlx-grow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit")):
    pass  # the app's options; the help text is the app's own


app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(substrate_app, name="substrate")
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")


class _Console(Console):
    """Rich output that is not cut at 80 columns when it goes to a file or a pipe."""

    @property
    def size(self):
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(max(size.width, 1000), size.height)


# Markup is off: paths, library messages and user text are printed as they are.
console = _Console(markup=False)  # results
err = _Console(stderr=True, soft_wrap=True, markup=False)  # messages, notes, tables about the work

# Exit codes, the same in every command: 2 bad input, 1 a failure during the work, 130 Ctrl-C.
BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130
# OS errors that mean the machine, not the input: a full disk, an I/O error, no memory.
WORK_ERRNOS = {errno.ENOSPC, errno.EIO, errno.ENOMEM, getattr(errno, "EDQUOT", -1)}
OS_HINTS = {
    errno.EACCES: "choose a location you can write to, or fix its permissions",
    errno.EPERM: "choose a location you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "free some space and run again",
    errno.EISDIR: "a folder is where a file is expected: give a file",
    errno.ENOTDIR: "a part of this path is a file where a folder is expected",
}


def say(msg):
    """A message about the work (stderr, printed as it is)."""
    err.print(msg, highlight=False)


class _Warnings(logging.Handler):
    """The library's warnings (logger `mlx_grow`) as `warning: …` lines on stderr."""

    def emit(self, record):
        say(f"warning: {record.getMessage()}")


if not any(isinstance(h, _Warnings) for h in logging.getLogger("mlx_grow").handlers):
    logging.getLogger("mlx_grow").addHandler(_Warnings(logging.WARNING))


def fail(msg: str, code: int = BAD_INPUT):
    """`error: MSG` on one line (a library's message with line breaks is joined), and exit."""
    from rich.text import Text

    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    err.print(Text.assemble(("error:", "bold red"), " ", msg), highlight=False)
    raise typer.Exit(code)


def os_message(e: OSError) -> str:
    """One line naming the path: `PATH: Permission denied; what to do` (the hint
    also when the error names no path)."""
    if e.errno is None:
        return str(e)
    hint = OS_HINTS.get(e.errno)
    if not e.filename:
        return f"{e.strerror or e}" + (f"; {hint}" if hint else "")
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    return f"{where}: {e.strerror or 'error'}" + (f"; {hint}" if hint else "")


def guarded(fn):
    """One line and one exit code for every expected error: UserError and a
    missing/existing path or any other OS error (2; a full disk or I/O error: 1),
    Ctrl-C (130). Anything else is a bug and keeps its traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except OSError as e:
            fail(os_message(e), FAILED if e.errno in WORK_ERRNOS else BAD_INPUT)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)

    return wrapper
