"""``kws bench``: accuracy, size, speed and streaming detection quality of one model, side by side.

Modules (one concern each):

* :mod:`~kws.bench.options`: the command's options, declared once (argparse, the reproducing command line);
* :mod:`~kws.bench.inputs`: the model files and the checks of what is benchmarked;
* :mod:`~kws.bench.accuracy`, :mod:`~kws.bench.speed`, :mod:`~kws.bench.machine`: the measurements;
* :mod:`~kws.data.words`, :mod:`~kws.bench.events`, :mod:`~kws.bench.streams`: a long labelled test stream
  (word boundaries, ground truth records, planning and rendering);
* :mod:`~kws.bench.scoring`: detections against the ground truth (knows nothing of how streams are made);
* :mod:`~kws.bench.streaming`: the bench's stream from the test split, run through the live path;
* :mod:`~kws.bench.utterances`: what a stream can play (recordings with kind, label and duration);
* :mod:`~kws.bench.negative_passes`, :mod:`~kws.bench.negative_stream`:
  ``--negative-hours``, the negative-only stream (labelled passes, simulated rooms, the run through the live
  path, pass by pass);
* :mod:`~kws.bench.report` (with :mod:`~kws.bench.negative_report`): the typed report (``bench.json``), with
  the targets and published anchors (``anchors.json``);
* :mod:`~kws.bench.markdown` (with :mod:`~kws.bench.formatting`, :mod:`~kws.bench.negative_markdown`),
  :mod:`~kws.bench.plots`: ``bench.md`` and the figures;
* :mod:`~kws.bench.cli`: the command (``kws bench``).

Importing this package imports nothing heavy (no torch, no onnxruntime).
"""

from __future__ import annotations

from kws.errors import KWSError


class BenchError(KWSError):
    """``kws bench`` cannot run with these inputs (missing model files, mismatched models, ...)."""
