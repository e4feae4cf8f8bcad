"""The ``kws`` command: thin dispatch to one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen module is
imported, so ``kws listen`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kws import __version__
from kws.errors import KWSError

COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("kws.data.download", "fetch and verify the official Speech Commands archives"),
    "train": ("kws.train.cli", "train a stacked-LSTM keyword model on Speech Commands"),
    "teacher": (
        "kws.teacher.build",
        "train the pretrained-embedding teacher whose soft labels `kws train --teacher` learns",
    ),
    "tts": ("kws.data.tts", "synthesise extra training clips with espeak-ng (train-only data)"),
    "evaluate": ("kws.train.evaluate", "accuracy, per-class precision/recall and a confusion matrix of a checkpoint"),
    "export": ("kws.export.cli", "export a checkpoint to ONNX (whole-clip + streaming, fp32 + int8), checked"),
    "calibrate": (
        "kws.export.calibrate",
        "per-keyword thresholds for a false-accept budget, measured on held-out negatives, into the model",
    ),
    "listen": ("kws.runtime.listen", "detect keywords live from a microphone, a file or stdin (no torch)"),
    "bench": ("kws.bench.cli", "accuracy, size, speed and streaming detection quality, side by side"),
}

EPILOG = """examples:
  kws train --data speech_commands_v0.02 --out runs/v2
  kws evaluate runs/v2/best.pt --data speech_commands_test_set_v0.02
  kws export runs/v2/best.pt -o models/ --calibration speech_commands_v0.02
  kws calibrate models/kws.stream.int8.onnx --data speech_commands_v0.02 --negatives negatives -o calibrated.onnx
  kws listen                      # the shipped model, default microphone
  kws listen --input recording.wav

Run `kws COMMAND --help` for the options of each command."""


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kws",
        description="Keyword spotting from training to the edge.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kws {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "command",
        nargs="?",
        choices=list(COMMANDS),
        metavar="COMMAND",
        help="one of: " + "; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    state = {"prog": "kws"}
    try:
        return _main(argv, state)
    except KeyboardInterrupt:  # Ctrl-C at any point: while torch is imported, while parsing, while running
        print(f"{state['prog']}: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str], state: dict[str, str]) -> int:
    top = _top_parser()
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help / version / an error
        top.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    state["prog"] = f"kws {name}"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"kws {name}: error: this command needs {exc.name!r}, which is not installed "
            f"(pip install 'kws[train]' for training, export and bench)",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(
        prog=f"kws {name}",
        description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KWSError as exc:
        print(f"kws {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an unwritable output path or a full disk
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"kws {name}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
