"""Accuracy of the four models on the test clips: PyTorch, ONNX fp32 and ONNX int8 (whole clip), and the
int8 streaming model fed each clip from zero state. Scores come from :mod:`kws.export.checks` and
:func:`kws.train.evaluate.predict`, the figures from :func:`kws.train.evaluate.classification_report` and
:func:`kws.train.evaluate.accuracy` (one implementation of each, shared with ``kws evaluate`` and ``kws export``)."""

from __future__ import annotations

from typing import Any

from kws.bench.inputs import ModelFiles
from kws.bench.report import MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8, MODEL_TORCH, AccuracyFigures, ClassFigures
from kws.bench.speed import BENCH_THREADS
from kws.data.splits import SplitData

AGREEMENT_WARNING = 0.98
"""Top-1 agreement of ONNX fp32 with PyTorch below which the files are probably not from the checkpoint."""


def accuracy_reports(model: Any, files: ModelFiles, data: SplitData, labels: list[str]) -> dict[str, AccuracyFigures]:
    """The accuracy figures of each model, by name, with its top-1 agreement with PyTorch.

    Args:
        model: the checkpoint's :class:`~kws.model.network.KWSModel`.
        data: the test clips (int16 ``[clips, samples]``, labels ``[clips]``).
    """
    from kws.export import checks as ck
    from kws.train.evaluate import accuracy, classification_report, predict

    audio = data.float_audio(slice(None))
    scores = {
        MODEL_TORCH: predict(model, data.audio),
        MODEL_FP32: ck.onnx_clip_scores(ck.session(files.clip, BENCH_THREADS), audio),
        MODEL_INT8: ck.onnx_clip_scores(ck.session(files.clip_int8, BENCH_THREADS), audio),
        MODEL_STREAM_INT8: ck.streamed_clip_scores(ck.session(files.stream_int8, BENCH_THREADS), audio),
    }
    torch_top1 = scores[MODEL_TORCH].argmax(1)
    reports = {}
    for name, s in scores.items():
        r = classification_report(data.labels, s.argmax(1), labels)
        reports[name] = AccuracyFigures(
            accuracy=r["accuracy"],
            accuracy_ci95=tuple(r["accuracy_ci95"]),
            clips=r["clips"],
            per_class={k: ClassFigures(**v) for k, v in r["per_class"].items()},
            agreement_with_pytorch=accuracy(s, torch_top1),
            confusion_matrix=tuple(map(tuple, r["confusion_matrix"])),
        )
    return reports
