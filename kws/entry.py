"""The ``kws`` console script: imports the CLI inside a Ctrl-C guard.

``kws.cli`` imports argparse, logging and the error types (tens of milliseconds); a Ctrl-C that lands there
would otherwise print a traceback before the CLI's own handler exists.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130


def main() -> int:
    try:
        from kws.cli import main as cli_main
    except KeyboardInterrupt:
        print("kws: interrupted", file=sys.stderr)
        return INTERRUPTED
    return cli_main()
