"""Build examples/demo.wav: real Speech Commands test-split keywords over real background noise.

    python scripts/make_demo.py ../shared/data examples/

Takes one clip of each of six keywords and one non-keyword from the test split (speakers never used in
training: the same speaker-hash split `kws train` uses), places them 2.5 s apart over the v0.02
`_background_noise_` "running_tap" recording at a fixed level, and writes demo.wav plus demo.json (what was
planted, where, and from which files). Deterministic for a given data folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.config import DataConfig
from kws.constants import SAMPLE_RATE
from kws.data.audio import load_audio
from kws.data.layout import load_corpus

WORDS = ("yes", "stop", "left", "_unknown_", "go", "off", "right")
GAP_SECONDS = 2.5
LEAD_SECONDS = 1.0
NOISE_FILE = "running_tap.wav"
NOISE_GAIN = 0.15


def main(data: Path, out_dir: Path) -> None:
    archive = data / "speech_commands_test_set_v0.02"
    noise_root = data / "speech_commands_v0.02_sample"
    corpus = load_corpus(DataConfig(roots=(str(archive), str(noise_root))))
    test = [c for c in corpus.clips if c.split == "test" and c.path.is_relative_to(archive)]
    noise = load_audio(noise_root / "_background_noise_" / NOISE_FILE, SAMPLE_RATE)
    total = int((LEAD_SECONDS + GAP_SECONDS * len(WORDS) + 1.0) * SAMPLE_RATE)
    audio = np.resize(noise, total) * NOISE_GAIN
    planted = []
    for i, word in enumerate(WORDS):
        folder = archive / word
        clip = sorted((c for c in test if c.path.parent == folder), key=lambda c: c.path.name)[i]
        speech = load_audio(clip.path, SAMPLE_RATE)
        start = int((LEAD_SECONDS + GAP_SECONDS * i) * SAMPLE_RATE)
        audio[start : start + len(speech)] += speech
        label = clip.word if word == "_unknown_" else word
        planted.append(
            {
                "word": label,
                "keyword": word != "_unknown_",
                "start_s": start / SAMPLE_RATE,
                "file": str(clip.path.relative_to(data)),
            }
        )
    audio = np.clip(audio, -1, 1).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    sf.write(out_dir / "demo.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    meta = {
        "planted": planted,
        "noise": f"speech_commands_v0.02/_background_noise_/{NOISE_FILE} x {NOISE_GAIN}",
        "license": "Speech Commands (Warden 2018), CC BY 4.0; see examples/README.md",
    }
    (out_dir / "demo.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out_dir / 'demo.wav'} ({len(audio) / SAMPLE_RATE:.1f} s): {[p['word'] for p in planted]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
