"""Where this process stands in a run, from torchrun's environment (torch-free).

``torchrun --nproc_per_node N -m kws train ...`` starts N processes, each with ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`read_environment` reads
them into a :class:`Launch` (a plain single process without them, or with ``WORLD_SIZE=1``) and refuses, in one
line, an environment that is half there or out of range; :mod:`kws.train.distributed` joins the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kws.errors import KWSError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for every process (and what a distributed run needs)."""
LAUNCH_HINT = "launch it with `torchrun --nproc_per_node N -m kws train ...`"


def environment_rank() -> int:
    """``RANK`` from torchrun's environment (0 when it is absent or not a number)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a run, from torchrun's environment.

    Attributes:
        world_size: processes in the run (1: not distributed).
        rank: this process, ``0 .. world_size - 1`` (rank 0 writes every file).
        local_rank: this process on its machine (its GPU: ``cuda:local_rank``).
        local_world_size: processes on this machine (they share its CPU cores).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1


def read_environment(environ: dict[str, str] | None = None, required: bool = False) -> Launch:
    """The launch described by torchrun's environment variables.

    Args:
        required: refuse to run as a single process (``kws train --distributed``).

    Raises:
        KWSError: a distributed launch without (all of) torchrun's environment, or values out of range.
    """
    env = os.environ if environ is None else environ
    launched = [name for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if env.get(name, "") != ""]
    if not launched:
        if required:
            raise KWSError(f"--distributed needs torchrun's environment ({', '.join(ENV_VARS)}): {LAUNCH_HINT}")
        return Launch()

    def number(name: str, low: int, high: int | None = None, default: int | None = None) -> int:
        text = env.get(name, "")
        if text == "" and default is not None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise KWSError(f"{name}={text!r} is not a whole number; {LAUNCH_HINT}") from None
        if value < low or (high is not None and value > high):
            raise KWSError(f"{name}={value} is out of range ({low}..{'' if high is None else high}); {LAUNCH_HINT}")
        return value

    if env.get("WORLD_SIZE", "") == "":
        raise KWSError(f"{' and '.join(launched)} set but WORLD_SIZE is not: {LAUNCH_HINT}")
    world = number("WORLD_SIZE", 1)
    if world == 1:  # torchrun --nproc_per_node 1: a plain single-process run
        return Launch()
    missing = [name for name in ENV_VARS if env.get(name, "") == "" and name != "LOCAL_RANK"]
    if missing:
        raise KWSError(
            f"WORLD_SIZE={world} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            f"a distributed run needs torchrun's environment; {LAUNCH_HINT}"
        )
    rank = number("RANK", 0, world - 1)
    number("MASTER_PORT", 1, 65535)
    local_world = number("LOCAL_WORLD_SIZE", 1, world, default=world)
    local_rank = number("LOCAL_RANK", 0, local_world - 1, default=rank % local_world)
    return Launch(world_size=world, rank=rank, local_rank=local_rank, local_world_size=local_world)
