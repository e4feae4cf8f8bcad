"""The tiny training recipe the tests share: a 2x32 LSTM on 4 synthetic keywords, a few epochs, and what its
exports look like."""

from __future__ import annotations

TINY_LABELS = "yes,no,up,down"
TINY_LAYERS, TINY_HIDDEN = 2, 32
WINDOW_SAMPLES, HOP_SAMPLES = 512, 320
"""The analysis window (n_fft) and hop of the default FeatureConfig, in samples at 16 kHz (30 ms, 20 ms)."""
TINY_THRESHOLD = 0.4
"""The tiny model is trained for seconds: it ranks the synthetic words first but with posteriors of only
about 0.5 for some ("no"/"down" are close), so the tests that run it on them lower the detection threshold;
they test the runtime's path on a real exported model, not the model's confidence."""


def tiny_run_config(roots: tuple[str, ...], epochs: int = 10):
    from kws.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(hidden_size=TINY_HIDDEN, num_layers=TINY_LAYERS, dropout=0.0, input_dropout=0.0),
        data=DataConfig(roots=roots, labels=TINY_LABELS, validation_percent=15, testing_percent=15),
        augment=AugmentConfig(noise_prob=0.3, speed_prob=0.0, context_prob=0.3, time_masks=0, freq_masks=0),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, warmup_epochs=0.5, seed=0),
    )
