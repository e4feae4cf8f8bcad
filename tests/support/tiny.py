"""The tiny training recipe the tests share: a 2x32 LSTM on 4 synthetic keywords, a few epochs."""

from __future__ import annotations

TINY_LABELS = "yes,no,up,down"


def tiny_run_config(roots: tuple[str, ...], epochs: int = 10):
    from kws.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(hidden_size=32, num_layers=2, dropout=0.0, input_dropout=0.0),
        data=DataConfig(roots=roots, labels=TINY_LABELS, validation_percent=15, testing_percent=15),
        augment=AugmentConfig(noise_prob=0.3, speed_prob=0.0, context_prob=0.3, time_masks=0, freq_masks=0),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, warmup_epochs=0.5, seed=0),
    )
