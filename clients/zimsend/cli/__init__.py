"""The `zimsend` command.

One command, many distributions: each distribution that adds subcommands registers a function
under the `zimsend.commands` entry-point group (`device` from zimsend-client; `serve`, `admin`,
`up` from zimsend-server, ...). A phone that installed only zimsend-client gets `zimsend device`
and nothing that needs the server's dependencies.

A registration function receives the argparse sub-parsers object and adds its parser; the
parser's `handler` default is called with the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zimsend", description="ZimSend SMS gateway")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group="zimsend.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # A broken install of one distribution must not take the other commands down;
            # the broken command still says exactly what is wrong when it is used.
            _register_broken(commands, ep.name, exc)
        else:
            register(commands)
    return parser


def _register_broken(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, exc: ImportError
) -> None:
    parser = commands.add_parser(name, help=f"(unavailable: {exc})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(args: argparse.Namespace) -> int:
        print(f"zimsend {name}: cannot load this command: {exc}", file=sys.stderr)
        return 1

    parser.set_defaults(handler=fail)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
