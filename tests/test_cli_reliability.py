"""The `kws` command's reliability: Ctrl-C at any moment is one line and exit 130; `kws tts` writes only
plain-named folders under --out; `kws download` extracts with normal permissions, never leaves a partial
extraction behind on Ctrl-C, and cleans up after one that was killed."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import stat
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import pytest

from kws import cli


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        rc = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped kws.cli.main: the user would see a traceback")
    err = capsys.readouterr().err
    return rc, err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- Ctrl-C


class TestInterrupt:
    def test_while_importing_the_command(self, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        """Importing a command's module (torch) takes a second: Ctrl-C then is not a traceback."""
        monkeypatch.setattr(importlib, "import_module", _interrupt)
        rc, err = _run(["train", "--data", "x", "--out", "y"], capsys)
        assert rc == 130
        assert err == "kws train: interrupted\n"

    def test_while_parsing_arguments(self, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _interrupt)
        rc, err = _run(["download", "--out", "x"], capsys)
        assert (rc, err) == (130, "kws download: interrupted\n")

    def test_before_a_command_is_chosen(self, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _interrupt)
        rc, err = _run(["--verbose"], capsys)
        assert (rc, err) == (130, "kws: interrupted\n")

    def test_while_running(self, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        fake = types.SimpleNamespace(__doc__="fake", add_arguments=lambda parser: None, run=_interrupt)
        monkeypatch.setattr(importlib, "import_module", lambda name: fake)
        assert _run(["evaluate"], capsys) == (130, "kws evaluate: interrupted\n")


# ---------------------------------------------------------------------------------------------- kws tts


@pytest.fixture
def fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``espeak-ng`` on PATH that writes a short tone to its ``-w`` file (the real one is optional)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "espeak-ng"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import sys
            import numpy as np
            import soundfile as sf
            out = sys.argv[sys.argv.index("-w") + 1]
            t = np.arange(6615) / 22050
            sf.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050, subtype="PCM_16")
            """
        )
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


class TestTTS:
    def test_plain_words_written(self, tmp_path: Path, fake_espeak: Path, capsys) -> None:
        out = tmp_path / "tts"
        rc, _ = _run(["tts", "--out", str(out), "--words", "yes,don't", "--per-word", "2"], capsys)
        assert rc == 0
        assert sorted(p.name for p in out.iterdir()) == ["don't", "yes"]
        assert len(list((out / "yes").glob("*.wav"))) == 2

    @pytest.mark.parametrize("word", ["../../x", "..", "a/b", "-v", "_background_noise_", "x.wav", "ABSOLUTE"])
    def test_path_like_words_refused(self, tmp_path: Path, fake_espeak: Path, capsys, word: str) -> None:
        out = tmp_path / "deep" / "er" / "tts"
        if word == "ABSOLUTE":
            word = str(tmp_path / "absolute")
        before = sorted(tmp_path.rglob("*"))
        rc, err = _run(["tts", "--out", str(out), "--words", f"yes,{word}", "--per-word", "1"], capsys)
        assert rc == 2
        assert err.count("\n") == 1 and err.startswith("kws tts: error: --words") and "Traceback" not in err
        assert sorted(tmp_path.rglob("*")) == before, "nothing written anywhere"

    @pytest.mark.parametrize("per_word", ["0", "-5"])
    def test_per_word_at_least_one(self, tmp_path: Path, fake_espeak: Path, capsys, per_word: str) -> None:
        rc, err = _run(["tts", "--out", str(tmp_path / "tts"), "--words", "yes", "--per-word", per_word], capsys)
        assert rc == 2 and err == f"kws tts: error: --per-word must be at least 1, got {per_word}\n"
        assert not (tmp_path / "tts").exists()

    def test_no_clip_at_all_is_an_error(self, tmp_path: Path, fake_espeak: Path, capsys) -> None:
        fake_espeak.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(1)\n")
        rc, err = _run(["tts", "--out", str(tmp_path / "tts"), "--words", "yes", "--per-word", "2"], capsys)
        assert rc == 2 and err.splitlines()[-1].startswith("kws tts: error: espeak-ng produced no clip")


# ---------------------------------------------------------------------------------------------- kws download


def _archive(path: Path, members: dict[str, tuple[int, bytes | None]]) -> Path:
    """A .tar.gz with the given members (name: (mode, data); data None is a folder)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, (mode, data) in members.items():
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


SMALL_ARCHIVE = {
    "./": (0o700, None),
    "./yes/": (0o700, None),
    "./yes/a_nohash_0.wav": (0o600, b"RIFF"),
    "./no/b_nohash_0.wav": (0o644, b"RIFF"),
    "./README.md": (0o400, b"readme"),
}


@pytest.fixture
def umask():
    def set_umask(value: int) -> int:
        os.umask(value)
        return value

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def _download(archive: Path, out: Path, capsys) -> tuple[int, str]:
    return _run(["download", "--version", "test-v0.02", "--archive", str(archive), "--out", str(out)], capsys)


class TestDownload:
    @pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
    def test_normal_permissions(self, tmp_path: Path, capsys, umask, mask: int) -> None:
        umask(mask)
        archive = _archive(tmp_path / "speech_commands_test_set_v0.02.tar.gz", SMALL_ARCHIVE)
        out = tmp_path / "data"
        rc, err = _download(archive, out, capsys)
        assert rc == 0, err
        target = out / "speech_commands_test_set_v0.02"
        modes = {p.relative_to(target).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in target.rglob("*")}
        modes["."] = stat.S_IMODE(target.stat().st_mode)
        dirs, files = 0o777 & ~mask, 0o666 & ~mask
        expected = {".": dirs, "yes": dirs, "no": dirs, "yes/a_nohash_0.wav": files, "no/b_nohash_0.wav": files}
        assert modes == {**expected, "README.md": files}
        assert not list(out.glob(".extract-*"))

    def test_interrupt_leaves_no_staging(self, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
        archive = _archive(tmp_path / "speech_commands_test_set_v0.02.tar.gz", SMALL_ARCHIVE)
        monkeypatch.setattr(tarfile.TarFile, "extractall", _interrupt)
        out = tmp_path / "data"
        assert _download(archive, out, capsys) == (130, "kws download: interrupted\n")
        assert sorted(p.name for p in out.iterdir()) == []

    def test_stale_staging_cleaned(self, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture) -> None:
        archive = _archive(tmp_path / "speech_commands_test_set_v0.02.tar.gz", SMALL_ARCHIVE)
        out = tmp_path / "data"
        stale = [out / ".extract-abc123", out / ".extract-999999999-xyz"]  # old-style name; a dead process's
        live = out / f".extract-{os.getppid()}-busy"  # a running process's (another download): kept
        for folder in [*stale, live]:
            (folder / "yes").mkdir(parents=True)
            (folder / "yes" / "partial.wav").write_bytes(b"RIFF")
        with caplog.at_level(logging.INFO, logger="kws.data.download"):
            rc, err = _download(archive, out, capsys)
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == [live.name, "speech_commands_test_set_v0.02"]
        lines = [r.getMessage() for r in caplog.records if "partial extraction" in r.getMessage()]
        assert len(lines) == 1 and "removed 2 partial extraction folder(s)" in lines[0]

    def test_unsafe_member_refused(self, tmp_path: Path, capsys) -> None:
        archive = _archive(tmp_path / "speech_commands_test_set_v0.02.tar.gz", {"../evil.txt": (0o644, b"x")})
        rc, err = _download(archive, tmp_path / "data", capsys)
        assert rc == 2 and err.count("\n") == 1 and "not a valid Speech Commands archive" in err
        assert not (tmp_path / "evil.txt").exists()
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []

    def test_truncated_archive(self, tmp_path: Path, capsys) -> None:
        archive = _archive(tmp_path / "full.tar.gz", SMALL_ARCHIVE)
        broken = tmp_path / "speech_commands_test_set_v0.02.tar.gz"
        broken.write_bytes(archive.read_bytes()[:60])
        rc, err = _download(broken, tmp_path / "data", capsys)
        assert rc == 2 and err.count("\n") == 1 and "not a valid Speech Commands archive" in err
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


# ---------------------------------------------------------------------------------------------- model card

REPO = Path(__file__).resolve().parent.parent


def _model_card_script():
    spec = importlib.util.spec_from_file_location("model_card", REPO / "scripts" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestModelCard:
    def test_shipped_card_has_no_absolute_paths(self) -> None:
        text = (REPO / "kws" / "pretrained" / "MODEL_CARD.md").read_text()
        block = text.split("```json\n", 1)[1].split("```", 1)[0]
        data = json.loads(block)["data"]
        folders = [f for key in ("roots", "extra_train", "negatives") for f in data[key]]
        assert folders and not [f for f in folders if Path(f).is_absolute() or "/" in f], folders
        assert not re.search(r"(?<![\w.])/(work|home|tmp|root|Users|mnt|data)/", text)

    def test_folders_recorded_by_name(self) -> None:
        card = _model_card_script()
        config = {
            "model": {"hidden_size": 8},
            "data": {
                "roots": ["/work/shared/data/speech_commands_v0.02", "/srv/x/speech_commands_test_set_v0.02"],
                "extra_train": [],
                "negatives": ["/work/shared/data/wake_word_negatives"],
                "labels": "standard",
            },
        }
        out = card.portable_config(config)
        assert out["data"]["roots"] == ["speech_commands_v0.02", "speech_commands_test_set_v0.02"]
        assert out["data"]["negatives"] == ["wake_word_negatives"] and out["data"]["extra_train"] == []
        assert out["model"] == config["model"] and out["data"]["labels"] == "standard"
        assert config["data"]["roots"][0].startswith("/work"), "the input is not modified"

    def test_same_names_relative_to_the_common_folder(self) -> None:
        card = _model_card_script()
        folders = ["/data/a/speech_commands_v0.02", "/data/b/speech_commands_v0.02", "/data/wake_word_negatives"]
        assert card.portable_folders(folders) == [
            "a/speech_commands_v0.02",
            "b/speech_commands_v0.02",
            "wake_word_negatives",
        ]


# ---------------------------------------------------------------------------------------------- packaging


def test_wheel_builds_quietly_with_the_shipped_model(tmp_path: Path) -> None:
    """The package data is declared cleanly: building the wheel gives no setuptools warning (pip >= 25 shows
    them on every `pip install -e .`), and the wheel carries the shipped model."""
    import shutil
    import subprocess
    import zipfile

    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("kws", "export", "runtime"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    code = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(dist)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "always"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warnings_seen = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert not warnings_seen, "\n".join(warnings_seen)
    names = zipfile.ZipFile(dist / result.stdout.strip().splitlines()[-1]).namelist()
    for name in ("kws.stream.int8.onnx", "kws.int8.onnx", "MODEL_CARD.md"):
        assert f"kws/pretrained/{name}" in names
    assert "kws/export/pipeline.py" in names and "kws/runtime/listen.py" in names


def test_console_script_guards_the_cli_import(monkeypatch, capsys) -> None:
    """A Ctrl-C while ``kws.cli`` itself is imported is one line and exit 130, not a traceback."""
    import builtins
    import sys

    from kws import entry

    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "kws.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "kws.cli", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    assert entry.main() == 130
    assert capsys.readouterr().err == "kws: interrupted\n"
