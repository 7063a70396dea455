"""CLI sub-command groups beyond the core verbs. Each module here defines `register(app)`, which adds
its commands to the `backdoor-arena` Typer app; `cli.py` calls every module listed in COMMAND_MODULES."""

COMMAND_MODULES: tuple[str, ...] = ("detect", "fl", "defend")
