"""`modeldrop <command>`: one entry point; a command's module is imported only when that command runs.

Each command module offers `add_arguments(parser, command)` and `run(command, args) -> int`. The upload
client (`cli.upload`, `cli.admin`) imports no server module: it is a plain tus/HTTP client, and the
uploader-only distribution (`cli/setup.cfg`) ships without the server. There `serve` and `worker` say so.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from modeldrop.cli import __version__

COMMANDS = {
    "serve": ("modeldrop.server.main", "Run the upload server: tus endpoint, web UI and API."),
    "worker": ("modeldrop.worker.main", "Run RQ workers that finalize finished uploads (needs --redis-url)."),
    "upload": ("modeldrop.cli.upload", "Upload .gguf files to a modeldrop server, resuming where a run stopped."),
    "models": ("modeldrop.cli.admin", "List the models installed on a modeldrop server."),
    "verify": ("modeldrop.cli.admin", "Ask a modeldrop server to re-check an installed model on disk."),
    "load": ("modeldrop.cli.admin", "Have llama-server load an installed model now, and wait until it runs."),
    "unload": ("modeldrop.cli.admin", "Have llama-server unload an installed model."),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="modeldrop",
        usage="modeldrop COMMAND [options]   (modeldrop COMMAND --help for its options; modeldrop --version)",
        description="Resumable uploads of GGUF models into llama-server's models directory.",
        epilog=f"commands:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in COMMANDS:
        parser = _top_parser()
        if arguments and arguments[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        if arguments and arguments[0] == "--version":
            print(f"modeldrop {__version__}")
            return 0
        parser.print_usage(sys.stderr)
        wrong = f"unknown command {arguments[0]!r}" if arguments else "a command is required"
        print(f"modeldrop: error: {wrong}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command, rest = arguments[0], arguments[1:]
    module_name, summary = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        if not module_name.startswith(("modeldrop.server", "modeldrop.worker")):
            raise
        print(f"modeldrop: error: `modeldrop {command}` needs the server, which this install does not have "
              f"({missing}); install the full modeldrop package, not modeldrop-upload", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"modeldrop {command}", description=summary)
    module.add_arguments(parser, command)
    return int(module.run(command, parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
