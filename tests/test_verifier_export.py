"""``kws teacher --export-verifier``: a stand-in teacher (a head over the stand-in embedding ONNX files of
``support.teacher_models``) becomes ONE verifier ONNX file whose scores are the teacher's, with metadata the
torch-free parser reads; the verifier-on-a-stream figures of ``kws bench --verifier`` (kws.bench.verification)
follow from the recorded checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kws import cli
from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE, StreamEvent
from kws.bench.verification import VerifiedRun, choose_point, meets_rule, verifier_points
from kws.config import TeacherConfig, to_dict
from kws.runtime.detect import Detection
from kws.runtime.verifier import Check, Verifier
from kws.teacher import build as teacher
from kws.teacher.embedding import SpeechEmbedding
from kws.teacher.head import TeacherHead, head_logits
from kws.teacher.verifier_export import export_verifier, min_input_samples, windows_for
from kws.verifier_format import KIND_VERIFIER, VerifierMetadata
from support.teacher_models import SR, make_stand_in_models

LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down"]


@pytest.fixture(scope="module")
def embedding_models(tmp_path_factory) -> Path:
    return make_stand_in_models(tmp_path_factory.mktemp("embedding_models"))


def make_teacher(folder: Path, pooling: str = "mean-max", seed: int = 0) -> Path:
    """A teacher.pt as ``kws teacher`` writes it, with an untrained head (weights from ``seed``)."""
    torch.manual_seed(seed)
    config = TeacherConfig(pooling=pooling, hidden_size=16)
    head = TeacherHead(config, 16, len(LABELS))
    with torch.no_grad():  # LayerNorm starts at 1/0: make its weights count too
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.5, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": teacher.TEACHER_FORMAT, "version": teacher.TEACHER_VERSION, "config": to_dict(config),
        "labels": LABELS, "n_windows": 16, "head": head.state_dict(), "sample_rate": SR, "clip_samples": SR,
        "reports": {"validation": {"accuracy": 0.9, "accuracy_ci95": [0.8, 0.95], "clips": 50}},
        "embedding_models": {},
    }  # fmt: skip
    torch.save(payload, folder / teacher.TEACHER)
    return folder / teacher.TEACHER


def _teacher_scores(path: Path, models: Path, clip: np.ndarray) -> np.ndarray:
    head, config, _, _ = teacher.load_teacher(path)
    embedded = SpeechEmbedding(models, threads=1, pad_seconds=config.pad_seconds).embed(clip[None], desc="t")
    return torch.softmax(torch.from_numpy(head_logits(head, embedded)), -1).numpy()[0]


@pytest.mark.parametrize(("pooling", "window_ms"), [("mean-max", 1300.0), ("attention", 800.0), ("flatten", 1000.0)])
def test_one_file_scores_as_the_teacher(embedding_models, tmp_path, pooling, window_ms) -> None:
    path = make_teacher(tmp_path / "teacher", pooling)
    out = tmp_path / "verifier.onnx"
    meta = export_verifier(path, out, embedding_models=embedding_models, window_ms=window_ms, window_end_ms=100,
                           threshold=0.3)  # fmt: skip
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["audio"] and [o.name for o in proto.graph.output] == ["scores"]
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "Gather", "Softmax"}, "mel, windowing, head: one graph"
    verifier = Verifier(out)
    assert verifier.meta == meta and meta.labels == tuple(LABELS) and verifier.threshold == 0.3
    assert (verifier.window_ms, verifier.window_end_ms) == (window_ms, 100.0)
    assert "Apache-2.0" in meta.attribution and "openWakeWord" in meta.attribution
    assert meta.teacher["config"]["pooling"] == pooling and meta.teacher["accuracy"]["validation"]["accuracy"] == 0.9
    rng = np.random.default_rng(1)
    t = np.arange(verifier.window_samples) / SR
    for clip in (0.3 * np.sin(2 * np.pi * 700 * t), 0.05 * rng.standard_normal(len(t))):
        clip = clip.astype(np.float32)
        np.testing.assert_allclose(verifier.scores(clip), _teacher_scores(path, embedding_models, clip), atol=1e-4)


def test_any_length_from_the_minimum_and_flatten_only_its_own(embedding_models, tmp_path) -> None:
    out = tmp_path / "v.onnx"
    export_verifier(make_teacher(tmp_path / "t"), out, embedding_models=embedding_models)
    shortest = min_input_samples(0)  # without padding: 76 mel frames
    assert windows_for(shortest, 0) == 1 and windows_for(shortest - 1, 0) == 0
    assert min_input_samples(SR // 2) == 1, "half a second of zeros on each side is already one window"
    verifier = Verifier(out)
    for n in (1, SR, 2 * SR):
        assert verifier.scores(np.zeros(n, np.float32)).shape == (len(LABELS),)
    flat = tmp_path / "flat.onnx"
    with pytest.raises(Exception, match="flatten head takes 16 windows"):
        export_verifier(make_teacher(tmp_path / "f", "flatten"), flat, embedding_models=embedding_models)
    export_verifier(make_teacher(tmp_path / "f", "flatten"), flat, embedding_models=embedding_models, window_ms=1000)
    assert VerifierMetadata.from_props(
        {p.key: p.value for p in onnx.load(str(flat)).metadata_props}
    ).input_samples == SR  # fmt: skip
    with pytest.raises(Exception, match="does not fit the graph"):
        Verifier(flat, window_ms=900)


def test_command(embedding_models, tmp_path, capsys) -> None:
    make_teacher(tmp_path / "teacher")
    out = tmp_path / "verifier.onnx"
    argv = ["teacher", "--out", str(tmp_path / "teacher"), "--embedding-models", str(embedding_models),
            "--export-verifier", str(out), "--verifier-threshold", "0.4"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["kws.kind"] == KIND_VERIFIER and float(props["kws.verifier.threshold"]) == 0.4
    assert cli.main(["teacher", "--out", str(tmp_path / "none"), "--export-verifier", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no teacher at" in err[0]


def test_stream_figures_follow_from_the_checks() -> None:
    """Two keywords (one confirmed at 0.8, one only at 0.2) and two false accepts (0.9, 0.05)."""
    events = [StreamEvent(KIND_KEYWORD, "yes", "a", 1.0, 2.0, 1.2, 1.8, 0, 0.0, 20.0),
              StreamEvent(KIND_KEYWORD, "no", "b", 5.0, 6.0, 5.2, 5.8, 0, 0.0, 20.0),
              StreamEvent(KIND_NEGATIVE, "speech", "c", 10.0, 20.0, 10.0, 20.0, 0, 0.0, 20.0)]  # fmt: skip
    probabilities = [(1.9, "yes", 0.8), (5.9, "no", 0.2), (12.0, "yes", 0.9), (15.0, "no", 0.05)]
    checks = tuple(Check(Detection(t, k, 0.9, i), p, p >= 0.5, 0.01, 0.01, t, t) for i, (t, k, p) in
                   enumerate(probabilities))  # fmt: skip
    run = VerifiedRun(checks, {}, 0.5)
    points = {p.threshold: p for p in verifier_points(run, events, 3600.0, 1.0, (0.0, 0.1, 0.5, 0.95))}
    assert (points[0.0].hits, points[0.0].false_accepts) == (2, 2) == (points[0.0].hits_without, 2)
    assert (points[0.1].hits, points[0.1].false_accepts, points[0.1].fa_cut) == (2, 1, 2.0)
    assert (points[0.5].hits, points[0.5].false_accepts, points[0.5].recall_loss) == (1, 1, 0.5)
    assert points[0.95].false_accepts == 0 and points[0.95].fa_cut == float("inf")
    assert choose_point(list(points.values())).threshold == 0.1, "fewest false accepts within 1 point of recall"
    assert not meets_rule(points[0.1]) and meets_rule(points[0.0].__class__(0.1, 2, 2, 0, 2, 5, 1.0))
