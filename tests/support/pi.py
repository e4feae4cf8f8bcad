"""The emulated Raspberry Pi of ``scripts/pi_root.sh`` for tests: a Debian bookworm arm64 root with the
runtime's aarch64 wheels, run under qemu user-mode emulation.

The root is cached (``~/.cache/kws-pi-root``, or ``$KWS_PI_ROOT``) and reused by later runs; the kws package
of this checkout is reinstalled into it once per test session.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from support.tools import SCRIPTS, require_tools, run_checked

SCRIPT = SCRIPTS / "pi_root.sh"
PI_PACKAGES = "qemu-user-static debootstrap"
BUILD_TIMEOUT_S = 1800  # a cold build downloads ~45 MB of .debs and ~60 MB of wheels
RUN_TIMEOUT_S = 600  # emulated python is 10-50x slower than native


class PiRoot:
    """A built root: :meth:`run` runs an aarch64 command in it (``python3 ...``)."""

    def __init__(self, path: Path, build_seconds: float, install_seconds: float) -> None:
        self.path = path
        self.build_seconds = build_seconds
        self.install_seconds = install_seconds

    def run(self, *args: str, timeout: float = RUN_TIMEOUT_S, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``scripts/pi_root.sh run ARGS``; with ``check``, a non-zero exit fails the test with the output."""
        command = ["bash", str(SCRIPT), "run", *args]
        if check:
            return run_checked(command, timeout=timeout, cwd=cwd)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def build_pi_root() -> PiRoot:
    """Build (or reuse) the root and install this checkout's kws into it; skipped locally / failed in CI
    without qemu-user-static and debootstrap."""
    require_tools("the emulated Raspberry Pi", "qemu-aarch64-static", "debootstrap", "dpkg-deb",
                  packages=PI_PACKAGES)  # fmt: skip
    start = time.monotonic()
    run_checked(["bash", str(SCRIPT), "build"], timeout=BUILD_TIMEOUT_S)
    built = time.monotonic()
    run_checked(["bash", str(SCRIPT), "install-kws"], timeout=300)
    path = Path(run_checked(["bash", str(SCRIPT), "path"], timeout=30).stdout.strip())
    return PiRoot(path, built - start, time.monotonic() - built)
