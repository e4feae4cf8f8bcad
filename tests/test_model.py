"""The PyTorch model: streaming (frame by frame, carried state) equals the whole clip; a checkpoint rebuilds it,
whichever key its weights are saved under."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kws.config import FeatureConfig, ModelConfig
from kws.model.checkpoint import (
    LEGACY_WEIGHTS_KEY,
    WEIGHTS_KEY,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from kws.model.network import KWSModel


@pytest.fixture(params=["mean", "last"])
def model(request: pytest.FixtureRequest) -> KWSModel:
    torch.manual_seed(0)
    m = KWSModel(FeatureConfig(), ModelConfig(hidden_size=24, num_layers=2, pooling=request.param))
    return m.eval()


def test_frame_by_frame_equals_whole_clip(model: KWSModel) -> None:
    audio = torch.randn(2, 16000) * 0.1
    feats = model.frontend(audio)
    whole, _ = model(feats)
    state = None
    frames = []
    for t in range(feats.shape[1]):
        out, state = model(feats[:, t : t + 1], state)
        frames.append(out)
    streamed = torch.cat(frames, 1)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.pool(streamed), model.classify(audio), atol=1e-5, rtol=1e-5)


def test_features_are_frame_local(model: KWSModel) -> None:
    """A frame depends only on its own n_fft samples, so a stream computes the same frames as the clip."""
    fc = model.feature_config
    audio = torch.randn(1, 16000) * 0.1
    whole = model.frontend(audio)
    t = 7
    start = t * fc.hop_samples
    alone = model.frontend(audio[:, start : start + fc.n_fft])
    torch.testing.assert_close(alone[:, 0], whole[:, t], atol=1e-5, rtol=1e-5)
    assert whole.shape[1] == fc.num_frames(16000)


def test_state_shapes(model: KWSModel) -> None:
    h, c = model.initial_state(3)
    assert h.shape == (2, 3, 24) and c.shape == (2, 3, 24)


def test_checkpoints_with_the_old_weights_key_still_load(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``kws train`` saves the evaluated (EMA) weights under WEIGHTS_KEY; older checkpoints (runs/) under "model"."""
    payload = load_checkpoint(tiny_checkpoint)
    assert WEIGHTS_KEY in payload and LEGACY_WEIGHTS_KEY not in payload
    weights = payload[WEIGHTS_KEY]
    old = {k: v for k, v in payload.items() if k != WEIGHTS_KEY} | {LEGACY_WEIGHTS_KEY: weights}
    save_checkpoint(tmp_path / "old.pt", old)
    model, _, _ = model_from_checkpoint(tmp_path / "old.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    both = old | {WEIGHTS_KEY: {k: torch.zeros_like(v) for k, v in weights.items()}}  # the new key wins
    save_checkpoint(tmp_path / "both.pt", both)
    assert all(not t.any() for t in model_from_checkpoint(tmp_path / "both.pt")[0].state_dict().values())
    save_checkpoint(tmp_path / "none.pt", {k: v for k, v in old.items() if k != LEGACY_WEIGHTS_KEY})
    with pytest.raises(CheckpointError, match="weights are missing"):
        model_from_checkpoint(tmp_path / "none.pt")
