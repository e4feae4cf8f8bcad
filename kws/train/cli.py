# Over 400 lines on purpose: one table declares every `kws train` option (flag, help, config field), and the
# parser, the config it builds and the --resume conflict check are all made from it, here.
"""Train a stacked-LSTM keyword model on Speech Commands.

Reads one or more Speech Commands folders (full dataset v0.01/v0.02 and/or the 12-class test archive),
trains with seeded on-the-fly augmentation (time shift, speed, gain, background noise, preceding context,
SpecAugment), validates every epoch, keeps the best checkpoint and finally evaluates it on the test split.

Writes to --out: last.pt (for --resume), best.pt (the model to export), metrics.jsonl, curves.png,
test.json and test_confusion.png. The whole run configuration is saved in every checkpoint.

Several GPUs (or CPU processes, or machines): `torchrun --nproc_per_node N -m kws train ...` trains one model with
DistributedDataParallel (NCCL on CUDA, gloo on CPU); add `--nnodes M --rdzv-backend c10d --rdzv-endpoint
HOST:PORT` on every machine for several. --batch-size is per process (the global batch is N times larger); each
epoch's shuffled order is shared by all processes and split between them; rank 0 alone writes files and logs, and
its checkpoints are those of a single process (--resume them with the same number of processes). The clips are
read through a decoded-audio cache (--cache) shared by all processes and later runs.
"""

# (Over 400 lines: the one table of every `kws train` option, with its help text.)
# The text above is `kws train --help`'s description. This module is the command line of `kws train`: one table
# of its options (flag, help, the RunConfig field it sets), from which the parser, the run configuration and the
# --resume conflict check are all derived; the training itself is kws.train.loop.

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kws.config import (
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_SEED,
    MAX_STREAM_BATCH,
    MAX_STREAM_SECONDS,
    AugmentConfig,
    RunConfig,
)
from kws.data.cache import default_cache_dir
from kws.errors import ConfigError, KWSError
from kws.model.checkpoint import load_checkpoint, run_config
from kws.train.launch import environment_rank
from kws.train.loop import PRECISIONS, train
from kws.train.run_folder import LAST, absolute_data_paths

PASSED_FLAGS = "passed_flags"
"""Namespace attribute: the dests of the options given on the command line (see :func:`passed_flags`)."""
RESUME_FREE_FLAGS = frozenset({"out", "resume", "device", "threads", "cache", "no_cache", "precision", "distributed"})
"""Options that may differ from the saved run on --resume (they do not change what is computed)."""


def _note_passed(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, PASSED_FLAGS, frozenset(getattr(namespace, PASSED_FLAGS, None) or ()) | {dest})


class _Store(argparse.Action):
    """``store``, noting that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        _note_passed(namespace, self.dest)


class _StoreTrue(argparse.Action):
    """``store_true``, noting that the option was given."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        _note_passed(namespace, self.dest)


class _Extend(argparse.Action):
    """``extend`` of one or more values (``--data A --data B C`` gives ``[A, B, C]``: a repeated option adds, it
    never replaces), noting that the option was given."""

    def __init__(self, option_strings, dest, nargs="+", **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])  # a copy: the default list is never changed
        items.extend(values)
        setattr(namespace, self.dest, items)
        _note_passed(namespace, self.dest)


_FROM_CONFIG = object()
"""Option default: the value of its RunConfig field in ``RunConfig()``."""


@dataclass(frozen=True)
class Option:
    """One option of ``kws train``.

    Attributes:
        field: the RunConfig field it sets, ``SECTION.NAME`` (``data.roots``); ``augment`` for --no-augment (the
            whole section); "" for an option about how or where the run executes, not what it computes.
        default: the parser's default; by default the field's value in ``RunConfig()`` (a list for ``_Extend``).
    """

    flag: str
    help: str
    field: str = ""
    type: Callable[[str], Any] | None = None
    action: type[argparse.Action] = _Store
    default: Any = _FROM_CONFIG
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def value(self, config: RunConfig) -> Any:
        """The value this option sets, read from ``config``."""
        if self.field == "augment":
            return config.augment == AugmentConfig.none()
        section, name = self.field.split(".")
        return getattr(getattr(config, section), name)

    def add_to(self, group: argparse._ArgumentGroup, defaults: RunConfig) -> None:
        kwargs: dict[str, Any] = {"action": self.action, "help": self.help}
        if self.action is not _StoreTrue:
            default = self.value(defaults) if self.default is _FROM_CONFIG else self.default
            kwargs["default"] = list(default) if self.action is _Extend and default is not None else default
        extra = {"type": self.type, "metavar": self.metavar, "choices": self.choices}
        group.add_argument(self.flag, **kwargs, **{k: v for k, v in extra.items() if v is not None})


def option_groups() -> tuple[tuple[str, str | None, tuple[Option, ...]], ...]:
    """The options of ``kws train`` by help group, in the order ``--help`` lists them: ``(title, description,
    options)``. A function, so that --cache's default follows the environment of the moment."""
    data = (
        Option(
            "--data",
            "Speech Commands folder(s): the full dataset (v0.01/v0.02), the 12-class test archive, "
            "or several combined (splits stay speaker-disjoint across them); repeatable",
            "data.roots",
            action=_Extend,
            default=None,
            metavar="DIR",
        ),
        Option(
            "--extra-train",
            "extra Speech Commands-layout folder(s) used for training only, e.g. `kws tts` output; repeatable",
            "data.extra_train",
            action=_Extend,
            metavar="DIR",
        ),
        Option(
            "--negatives",
            "folder(s) of non-keyword speech (any layout): 1 s crops of half of the files (by a fixed hash) join "
            "_unknown_ in training; `kws bench --negatives` streams the other half; repeatable",
            "data.negatives",
            action=_Extend,
            metavar="DIR",
        ),
        Option(
            "--labels",
            "'standard' (10 keywords + _silence_ + _unknown_), 'all' (every word), or a comma-separated "
            "keyword list (default: %(default)s)",
            "data.labels",
        ),
        Option(
            "--unknown-ratio",
            "_unknown_ clips per keyword class size (default: %(default)s)",
            "data.unknown_ratio",
            float,
        ),
        Option(
            "--silence-ratio",
            "_silence_ clips per keyword class size (default: %(default)s)",
            "data.silence_ratio",
            float,
        ),
        Option(
            "--validation-percent",
            "speakers (by hash) in the validation split, for data without official lists (default: %(default)s)",
            "data.validation_percent",
            float,
        ),
        Option(
            "--testing-percent",
            "speakers (by hash) in the test split, for data without official lists (default: %(default)s)",
            "data.testing_percent",
            float,
        ),
    )
    model = (
        Option("--window-ms", "analysis window (default: %(default)s)", "features.window_ms", float),
        Option("--hop-ms", "frame hop (default: %(default)s)", "features.hop_ms", float),
        Option("--n-mfcc", "MFCC coefficients (default: %(default)s)", "features.n_mfcc", int),
        Option(
            "--hidden-size", f"LSTM units, at most {MAX_HIDDEN_SIZE} (default: %(default)s)", "model.hidden_size", int
        ),
        Option("--layers", f"LSTM layers, at most {MAX_LAYERS} (default: %(default)s)", "model.num_layers", int),
        Option(
            "--proj-size",
            "LSTM projection size; only 0 (none) is accepted, since `kws export` cannot export projections "
            "(default: %(default)s)",
            "model.proj_size",
            int,
        ),
        Option("--dropout", "dropout (default: %(default)s)", "model.dropout", float),
    )
    training = (
        Option("--out", "run folder (default: %(default)s)", type=Path, default=Path("runs/kws")),
        Option("--epochs", "epochs (default: %(default)s)", "train.epochs", int),
        Option("--batch-size", "batch size (default: %(default)s)", "train.batch_size", int),
        Option("--lr", "peak AdamW learning rate (default: %(default)s)", "train.lr", float),
        Option("--seed", f"random seed, 0..{MAX_SEED} (default: %(default)s)", "train.seed", int),
        Option("--no-augment", "train without any augmentation", "augment", action=_StoreTrue),
        Option(
            "--reverb-prob",
            "share of the speech clips convolved with one of a bank of simulated rooms (pyroomacoustics, RT60 "
            "0.2-0.8 s; a decaying-noise tail without it) (default: %(default)s: off)",
            "augment.reverb_prob",
            float,
        ),
        Option(
            "--class-weight-power",
            "weigh each class's loss by (its training clips) ** -POWER: 0 off, 0.5 halfway, 1 every class "
            "counts the same, for unbalanced data such as few on/off clips (default: %(default)s)",
            "train.class_weight_power",
            float,
        ),
        Option(
            "--fine-unknowns",
            "give every non-keyword word of the training split its own model output, trained on its word, and "
            "collapse them into _unknown_ (log-sum-exp) in the 12-class logits that are evaluated and exported",
            "train.fine_unknowns",
            action=_StoreTrue,
        ),
        Option(
            "--fine-weight",
            "weight of the cross-entropy on those word outputs, beside the 12-class loss (default: %(default)s)",
            "train.fine_weight",
            float,
        ),
        Option(
            "--max-minutes",
            "stop after the epoch that passes this many minutes (default: no limit)",
            "train.max_minutes",
            float,
        ),
        Option("--max-steps", "stop after this many steps (default: no limit)", "train.max_steps", int),
        Option(
            "--device",
            "where to train (default: CUDA if available, else every CPU core)",
            default="auto",
            choices=("auto", "cpu", "cuda"),
        ),
        Option("--threads", "CPU threads (default: every core; fewer if the machine is shared)", type=int, default=0),
        Option(
            "--resume",
            "continue the interrupted run in --out exactly where it stopped, with its saved config: other flags "
            "must agree with it (only --threads, --device, --cache, --no-cache, --precision and --distributed may "
            "differ); a distributed run resumes with the same number of processes",
            action=_StoreTrue,
        ),
    )
    scale = (
        Option(
            "--workers",
            "DataLoader worker processes that read and augment the training batches, per process (default: "
            "%(default)s: in the training process). With 1 or more, and in every distributed run, each batch is "
            "augmented from its own seed, so the number of workers never changes the result",
            "train.num_workers",
            int,
        ),
        Option(
            "--cache",
            "decoded-audio cache: each data folder is decoded once into an int16 memory map there, shared by the "
            "processes of a run and by later runs, and rebuilt when the folder changes (default: $KWS_CACHE_DIR or "
            "%(default)s)",
            type=Path,
            default=default_cache_dir(),
            metavar="DIR",
        ),
        Option("--no-cache", "read the audio files themselves (no cache)", action=_StoreTrue),
        Option(
            "--precision",
            "fp32, or bf16/fp16 autocast of the LSTM on CUDA (fp16 with loss scaling); features and "
            "validation stay float32 (default: %(default)s)",
            default="fp32",
            choices=PRECISIONS,
        ),
        Option(
            "--distributed",
            "fail (one line) unless launched by torchrun, instead of training as a single process",
            action=_StoreTrue,
        ),
    )
    distillation = (
        Option(
            "--teacher",
            "learn also from the soft labels of the pretrained-embedding teacher in DIR (`kws teacher --out DIR`)",
            "train.teacher",
            metavar="DIR",
        ),
        Option(
            "--distill-weight",
            "share of the loss given to the teacher's soft labels (default: %(default)s)",
            "train.distill_weight",
            float,
        ),
        Option(
            "--distill-temperature",
            "softmax temperature of the distillation term (default: %(default)s)",
            "train.distill_temperature",
            float,
        ),
        Option(
            "--embed-distill-weight",
            "weight of a second teacher term: a linear map of the student's mean last-layer LSTM output regresses "
            "the teacher's mean speech embedding of the clip (standardised, mean squared error; training only, "
            "nothing is exported) (default: %(default)s: off)",
            "train.embed_distill_weight",
            float,
        ),
    )
    streams = (
        Option(
            "--stream-weight",
            "weight of the stream loss beside the clip loss, 0..100 (default: %(default)s: off)",
            "stream.weight",
            float,
        ),
        Option(
            "--stream-seconds",
            f"length of each training stream, 2..{MAX_STREAM_SECONDS:g} s (default: %(default)s)",
            "stream.seconds",
            float,
        ),
        Option(
            "--stream-batch",
            f"training streams per step, 1..{MAX_STREAM_BATCH} (default: %(default)s)",
            "stream.batch",
            int,
        ),
        Option(
            "--hard-negatives",
            "share of the streams' negative pieces cut around hard negatives: spots of the --negatives "
            "recordings where the model's keyword posterior peaks over --hard-threshold, mined again every "
            "epoch; the share grows to this at the last epoch, 0..1 (default: %(default)s: off)",
            "stream.hard_fraction",
            float,
        ),
        Option(
            "--hard-threshold",
            "pooled keyword posterior over which a spot is mined, in (0, 1) (default: %(default)s)",
            "stream.hard_threshold",
            float,
        ),
        Option(
            "--init-from",
            "start from the weights of this checkpoint (e.g. a run's best.pt; same labels and model shape), "
            "with a new optimiser and schedule: a fine-tuning stage",
            "train.init_from",
            metavar="CKPT",
        ),
    )
    return (
        ("data", None, data),
        ("model", None, model),
        ("training", None, training),
        (
            "scale (several GPUs or processes: `torchrun --nproc_per_node N -m kws train ...`)",
            "torchrun starts N processes that train one model with DistributedDataParallel (NCCL on CUDA, one\n"
            "GPU each; gloo on CPU); for several machines run the same command on each with --nnodes M\n"
            "--rdzv-backend c10d --rdzv-endpoint HOST:PORT. --batch-size is per process; rank 0 alone writes the\n"
            "files and logs.",
            scale,
        ),
        ("distillation (optional: a `kws teacher` folder made with the same --data)", None, distillation),
        (
            "streams (optional: frame-level training on long synthetic streams)",
            "Every step also scores a batch of long sequences built from the training split (keywords, unknown\n"
            "words, pieces of the --negatives recordings, noise) frame by frame, on the posteriors the runtime\n"
            "computes with the LSTM state carried over the whole sequence: each keyword's label on the frames\n"
            "just after its word ends, 'not a keyword' everywhere else. For fine-tuning: --init-from CKPT.",
            streams,
        ),
    )


def _options() -> dict[str, Option]:
    """Every option by dest."""
    return {option.dest: option for _, _, options in option_groups() for option in options}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    parser.set_defaults(**{PASSED_FLAGS: frozenset()})
    for title, description, options in option_groups():
        group = parser.add_argument_group(title, description)
        for option in options:
            option.add_to(group, defaults)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration the options in ``args`` set (every other field at its default), with absolute data
    folders and teacher folder."""
    d = RunConfig()
    fields: dict[str, dict[str, Any]] = {
        "features": {},
        "model": {},
        "data": {},
        "augment": {},
        "train": {},
        "stream": {},
    }
    for option in _options().values():
        if "." in option.field:
            section, name = option.field.split(".")
            fields[section][name] = getattr(args, option.dest)
    for name in ("roots", "extra_train", "negatives"):
        fields["data"][name] = tuple(fields["data"][name] or ())
    fields["features"]["n_mels"] = max(d.features.n_mels, args.n_mfcc)
    fields["model"]["n_inputs"] = args.n_mfcc
    fields["train"]["teacher"] = str(Path(args.teacher).expanduser().resolve()) if args.teacher else ""
    fields["train"]["init_from"] = str(Path(args.init_from).expanduser().resolve()) if args.init_from else ""
    features = replace(d.features, **fields["features"])  # built in this order: the first invalid value is named
    model = replace(d.model, **fields["model"])
    data = replace(d.data, **fields["data"])
    if args.no_augment and any(v != getattr(d.augment, k) for k, v in fields["augment"].items()):
        raise ConfigError("--no-augment turns every augmentation off: drop it or --reverb-prob")
    augment = AugmentConfig.none() if args.no_augment else replace(d.augment, **fields["augment"])
    train, stream = replace(d.train, **fields["train"]), replace(d.stream, **fields["stream"])
    config = RunConfig(features=features, model=model, data=data, augment=augment, train=train, stream=stream)
    return replace(config, data=absolute_data_paths(config.data))


def passed_flags(args: argparse.Namespace) -> set[str]:
    """The dests of the options the user gave (recorded while parsing; for a namespace built elsewhere, the
    options whose value differs from the parser's default)."""
    recorded = getattr(args, PASSED_FLAGS, None)
    if recorded is not None:
        return set(recorded)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return {k for k, v in vars(args).items() if k in defaults and k != PASSED_FLAGS and v != defaults[k]}


def resume_conflicts(args: argparse.Namespace, saved: RunConfig) -> list[str]:
    """The options in ``args`` that contradict the saved run configuration, as ``--flag VALUE (saved: X)``."""
    passed = passed_flags(args) - RESUME_FREE_FLAGS
    if not passed:
        return []
    wanted = config_from_args(args)
    saved = replace(saved, data=absolute_data_paths(saved.data))
    options = _options()
    conflicts = []
    for dest in sorted(passed):
        option = options.get(dest)
        if option is None or not option.field:
            raise KWSError(f"--{dest.replace('_', '-')} cannot be checked against a saved run")
        if option.value(wanted) != option.value(saved):
            conflicts.append(f"{option.flag} {_show(option.value(wanted))} (saved: {_show(option.value(saved))})")
    return conflicts


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(value) if value else "none"
    return str(value)


def run(args: argparse.Namespace) -> int:
    if not args.resume and not args.data:
        raise KWSError("--data is required (a Speech Commands folder; `kws download` fetches one)")
    if args.resume and (Path(args.out) / LAST).is_file():
        conflicts = resume_conflicts(args, run_config(load_checkpoint(Path(args.out) / LAST)))
        if conflicts:
            raise ConfigError(
                f"--resume continues {args.out} with its saved config, which these flags contradict: "
                f"{'; '.join(conflicts)}. Drop them (only --threads, --device, --cache and --precision may "
                "differ), or train anew into another --out"
            )
        config = RunConfig()  # unused: the saved config is
    else:
        config = config_from_args(args)
    best = train(
        config,
        args.out,
        resume=args.resume,
        device_name=args.device,
        threads=args.threads,
        cache_dir=None if args.no_cache else args.cache,
        precision=args.precision,
        require_distributed=args.distributed,
    )
    if environment_rank() == 0:
        print(f"best checkpoint: {best}")
    return 0
