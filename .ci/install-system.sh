#!/usr/bin/env bash
# System packages the test suite needs on a Debian bookworm CI machine (run as root).
#   - virtual microphone (tests/test_microphone.py, scripts/virtual_mic.sh):
#       pulseaudio pulseaudio-utils  the sound server + pactl/paplay/pacat
#       libasound2-plugins           ALSA "default" -> PulseAudio, so PortAudio (sounddevice) reaches it
#       libportaudio2                what the sounddevice wheel loads
#   - Raspberry Pi (aarch64) emulation (tests/test_pi.py, scripts/pi_root.sh):
#       qemu-user-static debootstrap debian-archive-keyring (debootstrap checks the Release signature)
#   - libsndfile1: soundfile's system fallback on x86 (its wheel bundles one; harmless to have)
#   - python3-venv: `make test` creates .venv with python3, and Debian's python3 has no ensurepip without it
# Idempotent: installs nothing (and skips `apt-get update`) when every package is already there.
set -euo pipefail

PACKAGES=(pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 qemu-user-static debootstrap
          debian-archive-keyring libsndfile1 python3-venv)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
echo "install-system: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "install-system: apt-get failed" >&2
    exit 1
fi
echo "install-system: done in $((SECONDS - start)) s"
