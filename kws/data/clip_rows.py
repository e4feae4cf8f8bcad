"""A split's int16 audio gathered on demand from several sources (memory-mapped cache rows, in-memory clips).

:func:`kws.data.splits.load_split` gives a split it loads ``lazy`` as a :class:`ClipRows`, so a large training split
is not copied into every process (nor into every DataLoader worker).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ClipRows:
    """A read-only int16 ``[clips, samples]`` array gathered on demand from several sources (memory-mapped cache
    rows and in-memory clips), so a large training split is not copied into every process.

    ``rows[index]`` (an int, a slice, or an int/bool array) returns an ordinary int16 array; ``np.asarray(rows)``
    materialises the whole split.

    Args:
        sources: int16 ``[n_i, samples]`` arrays.
        source: int ``[clips]``, which source holds each clip.
        row: int ``[clips]``, its row in that source.
    """

    def __init__(self, sources: Sequence[np.ndarray], source: np.ndarray, row: np.ndarray, samples: int) -> None:
        self.sources = list(sources)
        self.source = np.asarray(source, np.int64)
        self.row = np.asarray(row, np.int64)
        self.samples = samples
        self.shape = (len(self.row), samples)
        self.dtype = np.dtype(np.int16)
        self.ndim = 2

    def __len__(self) -> int:
        return len(self.row)

    @property
    def nbytes(self) -> int:
        return len(self.row) * self.samples * 2

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.asarray([index])][0]
        picked = np.arange(len(self.row))[index]
        out = np.empty((len(picked), self.samples), np.int16)
        src, row = self.source[picked], self.row[picked]
        for s in np.unique(src):
            where = src == s
            out[where] = self.sources[int(s)][row[where]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:
        """Memory-mapped sources travel as their file names (a DataLoader worker started by spawn or forkserver
        maps the file again instead of receiving a copy of the whole cache)."""
        state = dict(self.__dict__)
        state["sources"] = [
            ("memmap", s.filename, s.shape) if isinstance(s, np.memmap) and s.filename and s.offset == 0 else s
            for s in self.sources
        ]
        return state

    def __setstate__(self, state: dict) -> None:
        state["sources"] = [
            np.memmap(s[1], dtype=np.int16, mode="r", shape=s[2]) if isinstance(s, tuple) else s
            for s in state["sources"]
        ]
        self.__dict__.update(state)
