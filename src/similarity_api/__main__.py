"""``python -m similarity_api {build,serve,generate,evaluate}``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m similarity_api COMMAND [options]

commands:
  build      build a similarity index from activity CSVs and publish it
  serve      run the HTTP service on the published index
  generate   write seeded synthetic activity data in the same four-file layout
  evaluate   measure neighbour quality against baselines

Run `python -m similarity_api COMMAND --help` for the options of each command."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "build":
        from similarity_api.build.cli import main as run
    elif command == "serve":
        from similarity_api.serve import main as run
    elif command == "generate":
        from similarity_api.synth import cli as run
    elif command == "evaluate":
        from similarity_api.evaluate import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest))


if __name__ == "__main__":
    sys.exit(main())
