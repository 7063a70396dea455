"""The command line, one module per group of verbs. Each module defines `register(app)`, which adds its
commands to the `backdoor-arena` Typer app; `cli.build_app()` calls every module listed in COMMAND_MODULES.
Modules here parse arguments and print; they import only `backdoor_arena.api` and `backdoor_arena.registries`."""

COMMAND_MODULES: tuple[str, ...] = ("models", "defend", "detect", "zoo", "fl", "compiled", "game", "transfer", "benchmark")
