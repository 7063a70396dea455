"""The `backdoor-arena` command: one sub-command per verb, each a thin layer over `backdoor_arena.api`.

The app is built from the registries when the command starts (`build_app`), so every registered attack,
mitigation and detector has its sub-command. `main` is the one error boundary: usage errors exit 2 with
the usage line, the project's errors exit with their class's code and one line, Ctrl-C exits 130, and
anything else is a bug: one line naming the file that holds the traceback (or the traceback itself with
--debug or BACKDOOR_ARENA_DEBUG=1).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import traceback
from typing import Any

import typer

from . import api

HELP = ("Attack and defend neural networks against backdoors. Data: --data-root > $BACKDOOR_ARENA_DATA > "
        "~/.cache/backdoor-arena. Threads: $BACKDOOR_ARENA_THREADS (default: all cores). Errors: one line on stderr; "
        "exit 2 bad argument or config, 3 dataset, 4 model file, 5 incompatible inputs, 1 a bug (--debug shows "
        "the traceback), 130 interrupted.")
ISSUES_URL = "https://github.com/backdoor-arena/backdoor-arena/issues"


def build_app() -> typer.Typer:
    """The Typer app with every command group; generated commands reflect the registries as they are now."""
    from .commands import COMMAND_MODULES

    app = typer.Typer(name="backdoor-arena", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, help=HELP)
    for name in COMMAND_MODULES:
        importlib.import_module(f".commands.{name}", __package__).register(app)
    return app


def _one_line(text: str) -> str:
    """Messages stay on one line even when they quote a path with a newline in it."""
    return " ".join(str(text).replace("\r", "\\r").replace("\n", "\\n").split(" "))


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("BACKDOOR_ARENA_DEBUG", "") not in ("", "0")


def _click_exceptions() -> Any:
    """The exception module of the click that typer runs on: typer >= 0.20 bundles its own copy
    (typer._click), older ones depend on click."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer < 0.20: the click package
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with an exit code per error class, never a traceback for bad input."""
    cx = _click_exceptions()
    exits = (typer.Exit, getattr(cx, "Exit", typer.Exit))
    aborts = (KeyboardInterrupt, typer.Abort, getattr(cx, "Abort", typer.Abort))
    bare_group = getattr(cx, "NoArgsIsHelpError", ())  # click >= 8.2 raises it for a group without a command

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(args)
    args = [a for a in args if a != "--debug"]
    try:
        api.set_threads()  # the one process-wide setting, applied once here
        app = build_app()
        code = app(args=args, prog_name="backdoor-arena", standalone_mode=False)
        # typer returns (rather than raises) an exit code in non-standalone mode; Ctrl-C arrives as 130
        if isinstance(code, int) and not isinstance(code, bool) and code:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except api.ArenaError as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except bare_group as exc:  # a bare group: its help, as `--help` would print
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except cx.UsageError as exc:
        typer.echo(f"error: {_usage_message(exc)}", err=True)
        sys.exit(2)
    except cx.ClickException as exc:  # e.g. BadParameter outside a usage context, FileError
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else 2)
    except exits as exc:
        sys.exit(exc.exit_code)
    except aborts:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `backdoor-arena list | head`: the reader left; nothing to report
        sys.exit(0)
    except OSError as exc:
        if exc.errno == 28 or isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError)):
            where = f": {exc.filename!r}" if exc.filename else ""
            typer.echo(f"error: {_one_line(exc.strerror or exc)}{_one_line(where)}", err=True)
            sys.exit(1)
        _bug(exc, debug)
    except Exception as exc:
        _bug(exc, debug)


def _usage_message(exc: Exception) -> str:
    """One line: what is wrong, a "did you mean" for a mistyped sub-command, and the usage line."""
    import difflib

    message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and hasattr(ctx.command, "list_commands") and message.startswith("No such command"):
        typed = message.split("'")[1] if message.count("'") >= 2 else ""
        close = difflib.get_close_matches(typed.lower(), ctx.command.list_commands(ctx), n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        message += f" Commands: {', '.join(ctx.command.list_commands(ctx))}" if close else \
            f". Commands: {', '.join(ctx.command.list_commands(ctx))}"
    usage = ctx.get_usage().replace("Usage: ", "") if ctx is not None else "backdoor-arena [OPTIONS] COMMAND [ARGS]..."
    helper = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    return _one_line(f"{message}. Usage: {usage}{helper}")


def _bug(exc: BaseException, debug: bool) -> None:
    """An exception the project did not raise on purpose: a bug. One line, with where the traceback is."""
    if debug:
        traceback.print_exception(exc)
        sys.exit(1)
    text = "".join(traceback.format_exception(exc))
    try:
        fd, path = tempfile.mkstemp(prefix="backdoor-arena-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        where = f"traceback in {path}"
    except OSError:
        where = "run again with --debug for the traceback"
    typer.echo(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); this is a bug, please report it "
               f"at {ISSUES_URL} with the {where}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
