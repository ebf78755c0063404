"""``python -m similarity_api {build,serve,generate,evaluate}``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

USAGE = """usage: python -m similarity_api COMMAND [options]

commands:
  build      build a similarity index from activity CSVs and publish it
  serve      run the HTTP service on the published index
  generate   write seeded synthetic activity data in the same four-file layout
  evaluate   measure neighbour quality against baselines

Run `python -m similarity_api COMMAND --help` for the options of each command."""

#: command -> (module, function); imported only when used, so `serve` never loads the build stack.
COMMANDS = {
    "build": ("similarity_api.build.cli", "main"),
    "serve": ("similarity_api.serve", "main"),
    "generate": ("similarity_api.synth", "cli"),
    "evaluate": ("similarity_api.evaluate", "main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status: 0 done, 1 an input or environment problem, 2 bad usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"error: unknown command {command!r} (commands: {names})", file=sys.stderr)
        return 2
    module, name = COMMANDS[command]
    run: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), name)
    return int(run(rest))


if __name__ == "__main__":
    sys.exit(main())
