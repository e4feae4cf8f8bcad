"""The teacher's front end: Google's pretrained ``speech_embedding``, run with onnxruntime (torch-free).

The embedding is openWakeWord's ONNX port of Google's ``speech_embedding`` (Apache-2.0), read from two files:
``melspectrogram.onnx`` (int16-scale audio -> 32-bin log-mel frames, one per 10 ms) and ``embedding_model.onnx``
(windows of 76 mel frames -> one 96-d embedding). Each 1 s clip is centred in zeros
(``TeacherConfig.pad_seconds`` each side) and embedded every 8 mel frames (80 ms), so the windows cover the whole
word.

The files come from the installed ``openwakeword`` package (``pip install 'kws[teacher]'``; only its model
files are read, the package is never imported) or from a folder given by the caller. Training-time only:
nothing at run time needs them.
"""

from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from kws.data.audio import float_to_int16
from kws.errors import KWSError

MISSING_PACKAGE = "the teacher needs openWakeWord's speech embedding: pip install 'kws[teacher]'"
MEL_FILE, EMBEDDING_FILE = "melspectrogram.onnx", "embedding_model.onnx"
PACKAGE = "openwakeword"
PACKAGE_MODELS = ("resources", "models")
SAMPLE_RATE = 16_000  # the embedding's only rate
MEL_BINS = 32
WINDOW_FRAMES = 76  # mel frames per embedding window (775 ms of audio)
WINDOW_STEP = 8  # mel frames between windows (80 ms)
EMBEDDING_DIM = 96
MEL_SCALE, MEL_OFFSET = 0.1, 2.0  # the embedding model expects log-mel * 0.1 + 2 (as openWakeWord feeds it)
EMBED_BATCH_CLIPS = 32


def package_models_dir() -> Path:
    """The folder of the two ONNX files inside the installed openWakeWord package (never imported).

    Raises:
        KWSError: the package is not installed.
    """
    try:
        spec = find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise KWSError(MISSING_PACKAGE)
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_MODELS)


def _file_digest(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class SpeechEmbedding:
    """Google's ``speech_embedding`` (openWakeWord's ONNX port), run with onnxruntime.

    Args:
        models_dir: folder holding ``melspectrogram.onnx`` and ``embedding_model.onnx``; None: the installed
            openWakeWord package's.
        threads: onnxruntime intra-op threads (0: onnxruntime's default, every core).
        pad_seconds: zeros added before and after each clip.

    Raises:
        KWSError: the package is missing (and no folder is given), a file is missing or cannot be loaded.
    """

    def __init__(self, models_dir: str | Path | None = None, threads: int = 0, pad_seconds: float = 0.5) -> None:
        import onnxruntime as ort

        folder = Path(models_dir).expanduser() if models_dir is not None else package_models_dir()
        paths = {name: folder / name for name in (MEL_FILE, EMBEDDING_FILE)}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            hint = "" if models_dir is not None else f"; {MISSING_PACKAGE}"
            raise KWSError(f"{folder} has no {' or '.join(missing)}{hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions = {}
        for name, path in paths.items():
            try:
                sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise KWSError(f"cannot load {path}: {message}") from None
        self.folder = folder
        self.pad_samples = round(pad_seconds * SAMPLE_RATE)
        self._mel = sessions[MEL_FILE]
        self._embedding = sessions[EMBEDDING_FILE]
        self._mel_input = self._mel.get_inputs()[0].name
        self._embedding_input = self._embedding.get_inputs()[0].name
        self.fingerprint = {name: _file_digest(path) for name, path in paths.items()}
        """Size and SHA-256 of each ONNX file (part of the cache key)."""

    def mel(self, clip: np.ndarray) -> np.ndarray:
        """Scaled log-mel frames of one int16-scale float32 signal ``[samples]`` -> float32 ``[frames, 32]``.

        One frame per 10 ms (512-sample window in the real model). The model clamps its output to 80 dB below
        the largest value of the *whole input tensor*, so each clip is run alone: batching clips would couple
        them.
        """
        out = self._mel.run(None, {self._mel_input: clip[None].astype(np.float32, copy=False)})[0]
        frames = np.asarray(out, np.float32).reshape(-1, MEL_BINS)
        return frames * np.float32(MEL_SCALE) + np.float32(MEL_OFFSET)

    def windows(self, frames: np.ndarray) -> np.ndarray:
        """``[frames, 32]`` -> ``[windows, 76, 32, 1]``: every 76-frame window, 8 frames apart (80 ms)."""
        if len(frames) < WINDOW_FRAMES:
            raise KWSError(f"clip too short for the speech embedding: {len(frames)} mel frames < {WINDOW_FRAMES}")
        view = np.lib.stride_tricks.sliding_window_view(frames, WINDOW_FRAMES, axis=0)[::WINDOW_STEP]
        return np.ascontiguousarray(view.transpose(0, 2, 1))[..., None]

    def embed(self, audio: np.ndarray, batch_clips: int = EMBED_BATCH_CLIPS, desc: str = "embedding") -> np.ndarray:
        """Embed clips, each centred in ``pad_seconds`` of zeros on both sides.

        Args:
            audio: 16 kHz clips ``[clips, samples]``, int16 or float in [-1, 1] (scaled by 32768 and rounded, so
                a float clip and its int16 version give the same embedding).
            batch_clips: clips per embedding-model call.
            desc: progress-bar label.

        Returns:
            float32 ``[clips, windows, 96]``; ``windows = (frames - 76) // 8 + 1`` for the padded length's mel
            frames (16 for 1 s clips and the default 0.5 s padding).
        """
        from tqdm import tqdm

        audio = np.asarray(audio)
        if audio.ndim != 2:
            raise ValueError(f"expected clips [clips, samples], got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.integer):
            audio = float_to_int16(audio.astype(np.float32, copy=False))
        pad = np.zeros(self.pad_samples, np.float32)
        out: list[np.ndarray] = []
        bar = tqdm(total=len(audio), desc=desc, unit="clip", leave=False, mininterval=1.0, disable=None)
        for start in range(0, len(audio), batch_clips):
            batch = audio[start : start + batch_clips]
            windows = [self.windows(self.mel(np.concatenate([pad, clip.astype(np.float32), pad]))) for clip in batch]
            n_windows = len(windows[0])
            result = self._embedding.run(None, {self._embedding_input: np.concatenate(windows)})[0]
            out.append(np.asarray(result, np.float32).reshape(len(batch), n_windows, EMBEDDING_DIM))
            bar.update(len(batch))
        bar.close()
        if not out:
            n_windows = len(self.windows(self.mel(np.zeros(audio.shape[1] + 2 * self.pad_samples, np.float32))))
            return np.zeros((0, n_windows, EMBEDDING_DIM), np.float32)
        return np.concatenate(out)
