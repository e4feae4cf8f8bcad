"""The PyTorch model: streaming (frame by frame, carried state) equals the whole clip."""

from __future__ import annotations

import pytest
import torch

from kws.config import FeatureConfig, ModelConfig
from kws.model import KWSModel


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
