"""MFCC front end: a thin ``nn.Module`` over ``torchaudio.transforms.MFCC``, computed frame by frame.

Every frame depends only on its own ``n_fft`` samples (``center=False``, ``log_mels=True``, no ``top_db``
clamp, no clip-level normalisation), so a stream computes exactly the frames of the whole clip. A fixed
per-coefficient normalisation (mean and standard deviation measured on training data, stored as buffers) is
applied per frame.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from kws.config import FeatureConfig


class MFCCFrontend(nn.Module):
    """Raw audio -> normalised MFCC frames.

    Shapes:
        input: float32 ``[batch, samples]`` in [-1, 1] at ``config.sample_rate``.
        output: float32 ``[batch, frames, n_mfcc]`` with ``frames = config.num_frames(samples)``.
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=config.sample_rate,
            n_mfcc=config.n_mfcc,
            log_mels=True,
            melkwargs={
                "n_fft": config.n_fft,
                "win_length": config.window_samples,
                "hop_length": config.hop_samples,
                "n_mels": config.n_mels,
                "f_min": config.f_min,
                "f_max": config.f_max,
                "center": False,
                "power": 2.0,
            },
        )
        self.register_buffer("mean", torch.zeros(config.n_mfcc))
        self.register_buffer("std", torch.ones(config.n_mfcc))

    def raw(self, audio: torch.Tensor) -> torch.Tensor:
        """Un-normalised MFCCs, ``[batch, frames, n_mfcc]``."""
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape [batch, samples], got {tuple(audio.shape)}")
        return self.mfcc(audio).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return (self.raw(audio) - self.mean) / self.std

    @torch.no_grad()
    def fit_normalization(self, audio: torch.Tensor) -> None:
        """Set the per-coefficient mean/std from a batch of training audio ``[batch, samples]``."""
        frames = self.raw(audio).reshape(-1, self.config.n_mfcc)
        self.mean.copy_(frames.mean(0))
        self.std.copy_(frames.std(0).clamp_min(1e-3))


def spec_augment(
    features: torch.Tensor,
    time_masks: int,
    time_width: int,
    freq_masks: int,
    freq_width: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """SpecAugment masks on ``[batch, frames, coeffs]`` (masked values set to 0, the normalised mean)."""
    batch, frames, coeffs = features.shape
    mask = torch.ones_like(features)
    for count, width, size, dim in ((time_masks, time_width, frames, 1), (freq_masks, freq_width, coeffs, 2)):
        for _ in range(count):
            w = torch.randint(0, width + 1, (batch,), generator=generator)
            start = (torch.rand(batch, generator=generator) * (size - w).clamp_min(1)).long()
            pos = torch.arange(size).unsqueeze(0)
            m = ((pos >= start.unsqueeze(1)) & (pos < (start + w).unsqueeze(1))).float()
            mask = mask * (1 - (m.unsqueeze(2) if dim == 1 else m.unsqueeze(1)))
    return features * mask
