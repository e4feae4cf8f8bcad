"""Distributed data-parallel training under torchrun: process group, ranks, the sharded sampler, collectives.

``torchrun --nproc_per_node N -m kws train ...`` starts N processes with torchrun's environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`session` reads it
(:func:`kws.train.launch.read_environment`), joins the process group (NCCL on CUDA, one GPU per process:
``cuda:LOCAL_RANK``; gloo on CPU) and yields a :class:`Context` that the training loop asks for its rank, its
shard of each epoch and its collectives. Without that environment (or with ``WORLD_SIZE=1``) nothing distributed
is initialised: a plain single-process context.

Failures: an environment that is half there (``WORLD_SIZE`` without ``MASTER_ADDR``...), or ``--distributed``
without torchrun, is a one-line :class:`~kws.errors.KWSError`. A process that dies makes the others' next
collective fail (gloo: at once; NCCL: at its timeout, unless torchrun stops them first with SIGTERM); both end as
a :class:`PeerFailure`, a one-line error naming what happened, and what is on disk is whole (checkpoints are
written atomically by rank 0 alone, between collectives).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import logging
import math
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kws.errors import KWSError
from kws.train.launch import Launch, read_environment

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=30)
"""How long a collective waits for the other processes (building a large audio cache happens before any)."""


class PeerFailure(KWSError):
    """Another process of the distributed run failed, or torchrun stopped this one."""


class _Quiet(SystemExit):
    """Leaves a non-zero rank without a message: rank 0 reports the failure that every rank shares."""


def rank_seed(base: int, rank: int) -> int:
    """A torch seed for ``rank`` derived from the single-process seed ``base`` (``base`` itself for rank 0, so
    a single process keeps its seeds; the rank lives above bit 50, clear of every ``seed * 100_019 + epoch``)."""
    return base + (rank << 50)


def select_device(name: str, launch: Launch) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``; a distributed CUDA run uses
    ``cuda:LOCAL_RANK``.

    Raises:
        KWSError: CUDA asked for but absent, or fewer GPUs than processes on this machine.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise KWSError("--device cuda asked for, but no CUDA device is available")
    if name != "cuda" or launch.world_size == 1:
        return torch.device(name)
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise KWSError(
            f"LOCAL_RANK {launch.local_rank} needs GPU {launch.local_rank}, but this machine has {count}: use "
            f"--nproc_per_node {count} or fewer (one process per GPU), or --device cpu"
        )
    return torch.device("cuda", launch.local_rank)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The gist of a backend error: its first line without gloo's ``[file.cc:123]`` prefix."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).strip()
    text = text.split(". This is typically")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process went away (or timed out)."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    markers = ("gloo", "NCCL", "Connection reset", "Connection closed", "Connection refused", "Broken pipe")
    return any(marker in text for marker in markers) or "timed out" in text.lower()


@dataclass(frozen=True)
class Context:
    """This process's place in a (possibly single-process) run, and the collectives it takes part in.

    Every method works without a process group: a single process is a world of one.
    """

    launch: Launch
    device: torch.device
    backend: str = ""  # "nccl" or "gloo" while distributed, "" otherwise

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def distributed(self) -> bool:
        return self.launch.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics, plots, logs and progress bars."""
        return self.launch.rank == 0

    @property
    def progress_disable(self) -> bool | None:
        """tqdm's ``disable``: bars on rank 0 only (and there only on a terminal)."""
        return None if self.is_main else True

    def default_threads(self) -> int:
        """CPU threads for torch when ``--threads`` is 0: this machine's cores shared by its processes."""
        return max(1, (os.cpu_count() or 1) // self.launch.local_world_size)

    def lead(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 alone and hand its result (any picklable value) to every rank.

        If it raises on rank 0, rank 0 re-raises it and the other ranks leave quietly (exit status 2), so the
        error is reported once.
        """
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except BaseException as exc:  # re-raised below, once the other ranks were told
                failure = exc
                box[0] = ("failed", None)
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        if failure is not None:
            raise failure
        status, value = box[0]
        if status != "ok":
            raise _Quiet(2)
        return value

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (its parameters and buffers synchronised from rank 0); the model
        itself in a single process. Checkpoints keep using ``model``'s own ``state_dict``."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        # The buffers (MFCC matrices, normalisation) never change while training: synchronised once, at init.
        no_forward_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
            else {"broadcast_buffers": False}
        )
        return ddp(model, device_ids=ids, **no_forward_sync)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks of float64 ``values`` ``[n]`` (the values themselves alone)."""
        values = np.asarray(values, np.float64)
        if not self.distributed:
            return values
        tensor = torch.from_numpy(values.copy()).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def gather_shards(self, local: np.ndarray, total: int) -> np.ndarray:
        """Reassemble rows sharded ``rank::world_size``: ``local`` holds this rank's rows ``[rank::world, ...]``
        of an array of ``total`` rows; returns the whole array (float32) on every rank, in the original order."""
        local = np.asarray(local, np.float32)
        if not self.distributed:
            return local
        world = self.world_size
        per_rank = math.ceil(total / world)
        padded = np.zeros((per_rank, *local.shape[1:]), np.float32)
        padded[: len(local)] = local
        tensor = torch.from_numpy(padded).to(self.device)
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        out = np.zeros((total, *local.shape[1:]), np.float32)
        for r, part in enumerate(parts):
            rows = len(range(r, total, world))
            out[r::world] = part.cpu().numpy()[:rows]
        return out

    def check_replicas(self, what: str, *modules: nn.Module) -> None:
        """Refuse to go on if the ranks' copies of ``modules`` differ (compares a SHA-256 of their state).

        Raises:
            KWSError: the replicas diverged (on every rank).
        """
        if not self.distributed:
            return
        digest = state_digest(*modules)
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise KWSError(
                f"the processes' model copies differ {what} (rank{'s' if len(differ) > 1 else ''} "
                f"{', '.join(map(str, differ))} vs rank 0): the run is not data-parallel any more; nothing was "
                "written for this epoch"
            )


def state_digest(*modules: nn.Module) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) in the state of ``modules``."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ShardedSampler:
    """Each epoch's batches of this rank, cut from one seeded permutation that every rank draws alike.

    Epoch ``e``'s order is ``np.random.default_rng([seed, e]).permutation(size)`` (the order of a single-process
    run), repeated at its start to a multiple of ``world_size``. Global batch ``b`` is the ``b``-th run of
    ``world_size * batch_size`` clips of that order; rank ``r`` takes the ``r``-th of its ``world_size`` equal
    parts. So every rank has the same number of batches, of the same sizes, and a run's batches depend only on
    the seed, the epoch and the world size: a distributed run is repeatable, and resumable at any epoch.

    Args:
        size: clips in the training split.
        batch_size: clips per batch and process (the global batch is ``world_size`` times larger).
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @property
    def per_rank(self) -> int:
        """Clips per epoch and rank (the padded order's share)."""
        return math.ceil(self.size / self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of ``range(size)``, the same on every rank."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``: int ``[batch]`` clip indices each."""
        order = np.resize(self.order(epoch), self.per_rank * self.world_size)
        step = self.batch_size * self.world_size
        out = []
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            share = len(chunk) // self.world_size
            out.append(chunk[self.rank * share : (self.rank + 1) * share])
        return out


@contextlib.contextmanager
def session(device_name: str = "auto", required: bool = False, timeout: datetime.timedelta = TIMEOUT):
    """Join the run's process group for the duration of the block (nothing at all for a single process).

    Yields:
        the :class:`Context` of this process.

    Raises:
        KWSError: a bad launch environment or device, or the process group cannot be joined.
        PeerFailure: another process failed (or torchrun stopped this one) during the block.
    """
    launch = read_environment(required=required)
    device = select_device(device_name, launch)
    if launch.world_size == 1:
        yield Context(launch, device)
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend, init_method="env://", rank=launch.rank, world_size=launch.world_size, timeout=timeout
        )
    except (RuntimeError, ValueError) as exc:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise KWSError(f"rank {launch.rank} cannot join the distributed run at {where}: {_one_line(exc)}") from None
    context = Context(launch, device, backend)
    quiet = logging.getLogger("kws")
    level = quiet.level
    if not context.is_main:
        quiet.setLevel(logging.ERROR)  # rank 0 logs for the run
    previous = _handle_sigterm(_terminated)
    try:
        yield context
        # Leave together: a rank that tears gloo down and exits while rank 0 still writes its final files can
        # abort in gloo's threads ("terminate called without an active exception", SIGABRT), failing the run.
        dist.barrier()
    except RuntimeError as exc:
        if not is_peer_failure(exc):
            raise
        raise PeerFailure(
            f"rank {launch.rank}: another process of the distributed run stopped ({_one_line(exc)}); the run is "
            "over and the files in --out hold its last complete epoch (the failing process's own error says why; "
            "continue with --resume)"
        ) from None
    finally:
        _handle_sigterm(previous)
        quiet.setLevel(level)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _handle_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM (from the main thread only); returns the previous one."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):  # not the main thread, or no previous Python handler
        return signal.SIG_DFL


def _terminated(signum: int, frame: Any) -> None:
    raise PeerFailure(
        "stopped by SIGTERM (torchrun stops every process when one of them fails, see its error above; or the run "
        "was cancelled): files in --out hold the last complete epoch; continue with --resume"
    )
