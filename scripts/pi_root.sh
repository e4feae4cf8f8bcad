#!/usr/bin/env bash
# An emulated Raspberry Pi (Debian bookworm arm64) to prove the torch-free runtime installs and runs on aarch64.
#
#   scripts/pi_root.sh build            # build the aarch64 root + runtime wheels (idempotent, cached)
#   scripts/pi_root.sh install-kws      # (re)install this checkout's kws package into the root, no deps
#   scripts/pi_root.sh run CMD [ARG...] # run an aarch64 command in the root under qemu, e.g.
#   scripts/pi_root.sh run python3 -m kws.cli listen --model m.onnx --input clip.wav --json
#   scripts/pi_root.sh path             # print the root's directory
#   scripts/pi_root.sh clean            # delete the root
#
# The root (default ~/.cache/kws-pi-root, or $KWS_PI_ROOT) holds a minimal bookworm arm64 system with python3
# only, plus the runtime's dependencies as aarch64 wheels in /opt/site and the kws package in /opt/kws. Each step
# leaves a stamp file in ROOT/.kws/, so a second `build` does nothing; the dependency step is redone when the
# dependency list in pyproject.toml changes.
#
# How it works, without root privileges for chroot or binfmt_misc (neither is available in most containers):
#  - `debootstrap --foreign` only downloads and unpacks; the second stage (running aarch64 maintainer scripts)
#    is skipped, and every downloaded .deb is unpacked with `dpkg-deb -x` instead.
#  - commands run as `qemu-aarch64-static -L ROOT ROOT/usr/bin/...`: qemu looks up absolute paths inside ROOT
#    first, then on the host, so the aarch64 dynamic loader and libraries come from ROOT while host files (models,
#    WAVs under /tmp or the checkout) stay reachable by their usual paths.
#  - onnxruntime reads /proc/cpuinfo and /sys/devices/system/cpu/{possible,present} to size its thread pool and
#    pick kernels; under emulation the host's x86 answers make it crash, so ROOT holds a Raspberry Pi 4 (4x
#    Cortex-A72) cpuinfo and CPU lists as plain files, which qemu serves thanks to -L.
#  - qemu emulates a Cortex-A72 (the Pi 4's core: ARMv8.0, no dot-product or int8-matrix instructions), not
#    its default "max" CPU: onnxruntime picks its int8 kernels by CPU features, and under "max" it takes
#    ones a Pi 4 never runs (and whose int8 results came out far from the float model's); with the A72 the
#    kernels, and the results, are a Pi 4's.
#  - wheels come from the host's pip with `--only-binary=:all:` and one `--platform` per manylinux tag that
#    bookworm's glibc 2.36 accepts (manylinux_2_36_aarch64 down to manylinux2014_aarch64; pip does not expand
#    them itself), i.e. what `pip install kws` would pick on the Pi.
#
# Settings (environment): KWS_PI_ROOT, KWS_PI_CPU (qemu CPU model, default cortex-a72), KWS_PI_MIRROR (Debian
# mirror; default: the host's apt mirror, else deb.debian.org), KWS_PI_PYTHON (host python whose pip downloads
# wheels; default: the checkout's .venv, else python3). Needs: debootstrap, qemu-user-static, dpkg-deb (see .ci/install-system.sh), network to the Debian
# mirror and PyPI for the first build only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROOT="${KWS_PI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/kws-pi-root}"
SUITE=bookworm
ARCH=arm64
PY_VERSION=3.11                      # bookworm's python3
GLIBC_MINOR=36                       # bookworm's glibc is 2.36
STAMPS="$ROOT/.kws"
QEMU=qemu-aarch64-static
CPU="${KWS_PI_CPU:-cortex-a72}"       # the Raspberry Pi 4's core; see the header

log() { echo "pi_root: $*" >&2; }
die() { log "error: $*"; exit 1; }

host_python() {
    if [ -n "${KWS_PI_PYTHON:-}" ]; then echo "$KWS_PI_PYTHON"
    elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
    else echo python3
    fi
}

need_tools() {
    local tool missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} (apt-get install debootstrap qemu-user-static)"
}

# The first Debian mirror of the host's apt configuration (deb822 or one-line format), else deb.debian.org.
mirror() {
    if [ -n "${KWS_PI_MIRROR:-}" ]; then echo "$KWS_PI_MIRROR"; return; fi
    local found
    found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}') || true
    [ -n "$found" ] || found=$(awk '/^deb / && $0 !~ /security/ {
        for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null) || true
    echo "${found:-http://deb.debian.org/debian}"
}

# --platform options for every manylinux tag a glibc 2.GLIBC_MINOR aarch64 system accepts, newest first.
pip_platforms() {
    local minor
    for ((minor = GLIBC_MINOR; minor >= 17; minor--)); do printf -- '--platform manylinux_2_%s_aarch64 ' "$minor"; done
    printf -- '--platform manylinux2014_aarch64'
}

done_step() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark_step() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

step_debootstrap() {
    local key="$SUITE $ARCH minbase python3"
    done_step debootstrap "$key" && return
    need_tools debootstrap
    [ "$(id -u)" -eq 0 ] || die "the first build runs debootstrap, which needs root: run it as root once \
(e.g. sudo KWS_PI_ROOT=$ROOT $0 build, then chown -R $(id -un) $ROOT)"
    log "downloading a minimal $SUITE/$ARCH system with python3 into $ROOT (first time only)"
    local start=$SECONDS m
    m=$(mirror)
    # A half-finished earlier attempt leaves debootstrap's work files; start that step over.
    rm -rf "$ROOT/debootstrap"
    mkdir -p "$ROOT"
    local attempt
    for attempt in 1 2; do  # a second try for a dropped connection; debootstrap keeps what it downloaded
        if debootstrap --arch="$ARCH" --foreign --variant=minbase --include=python3 "$SUITE" "$ROOT" "$m" \
            >"$ROOT/.kws-debootstrap.log" 2>&1; then
            break
        fi
        tail -5 "$ROOT/.kws-debootstrap.log" >&2
        [ "$attempt" -lt 2 ] || die "debootstrap failed (log: $ROOT/.kws-debootstrap.log)"
        log "debootstrap failed, trying again"
        rm -rf "$ROOT/debootstrap"
    done
    mark_step debootstrap "$key"
    log "downloaded in $((SECONDS - start)) s"
}

step_unpack() {
    local key debs
    debs=$(find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | sort)
    [ -n "$debs" ] || die "no .deb files in $ROOT/var/cache/apt/archives (remove $ROOT and build again)"
    key=$(echo "$debs" | sha256sum | cut -c1-16)
    done_step unpack "$key" && return
    log "unpacking $(echo "$debs" | wc -l) packages"
    local deb
    while read -r deb; do dpkg-deb -x "$deb" "$ROOT" || die "cannot unpack $deb"; done <<<"$debs"
    # usrmerge: bookworm's base-files ships /bin, /lib... as links into /usr only in the second stage.
    local d
    for d in bin sbin lib; do
        if [ ! -e "$ROOT/$d" ] && [ ! -L "$ROOT/$d" ]; then ln -s "usr/$d" "$ROOT/$d"; fi
    done
    [ -x "$ROOT/usr/bin/python$PY_VERSION" ] || die "python$PY_VERSION missing after unpacking"
    mark_step unpack "$key"
}

# A Raspberry Pi 4 as onnxruntime sees it (see the header); plain files that qemu -L serves for /proc and /sys.
step_fake_cpu() {
    local key=rpi4-v1
    done_step fake_cpu "$key" && return
    mkdir -p "$ROOT/proc" "$ROOT/sys/devices/system/cpu"
    local cpu
    : >"$ROOT/proc/cpuinfo"
    for cpu in 0 1 2 3; do
        cat >>"$ROOT/proc/cpuinfo" <<EOF
processor	: $cpu
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

EOF
    done
    cat >>"$ROOT/proc/cpuinfo" <<EOF
Hardware	: BCM2835
Revision	: c03114
Model		: Raspberry Pi 4 Model B Rev 1.4
EOF
    # Two CPUs, not four: the emulated threads share the host's cores.
    echo 0-1 >"$ROOT/sys/devices/system/cpu/possible"
    echo 0-1 >"$ROOT/sys/devices/system/cpu/present"
    echo 0-1 >"$ROOT/sys/devices/system/cpu/online"
    mark_step fake_cpu "$key"
}

# The runtime dependencies of pyproject.toml's [project] dependencies, as aarch64 wheels, in ROOT/opt/site.
step_wheels() {
    local py deps key
    py=$(host_python)
    deps=$("$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$REPO/pyproject.toml") || die "cannot read dependencies from $REPO/pyproject.toml"
    key=$(printf '%s\n' "$deps" "$GLIBC_MINOR" "$PY_VERSION" | sha256sum | cut -c1-16)
    done_step wheels "$key" && return
    log "installing aarch64 wheels: $(echo "$deps" | tr '\n' ' ')"
    local start=$SECONDS
    rm -rf "$ROOT/opt/site" "$ROOT/opt/site.tmp"
    mkdir -p "$ROOT/opt"
    # shellcheck disable=SC2046  # word splitting wanted: options and one requirement per line
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --only-binary=:all: $(pip_platforms) --python-version "$PY_VERSION" \
        --implementation cp --target "$ROOT/opt/site.tmp" $(echo "$deps" | tr '\n' ' ') \
        >"$ROOT/.kws-pip.log" 2>&1 \
        || { tail -5 "$ROOT/.kws-pip.log" >&2; die "pip could not install aarch64 wheels (log: $ROOT/.kws-pip.log)"; }
    mv "$ROOT/opt/site.tmp" "$ROOT/opt/site"
    mark_step wheels "$key"
    log "wheels installed in $((SECONDS - start)) s"
}

# One build or install at a time per root (parallel test runs share the cache).
lock_root() {
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock 9
}

cmd_build() {
    need_tools "$QEMU" dpkg-deb
    lock_root
    local start=$SECONDS
    step_debootstrap
    step_unpack
    step_fake_cpu
    step_wheels
    log "root ready in $ROOT ($((SECONDS - start)) s)"
}

# This checkout's kws package, without dependencies (a pure-python wheel), in ROOT/opt/kws. Always redone, so
# the root runs the current code (committed or not). Built from a copy, so nothing lands in the checkout.
cmd_install_kws() {
    [ -f "$STAMPS/wheels" ] || die "no root in $ROOT yet (run: $0 build)"
    lock_root
    local py src
    py=$(host_python)
    src=$(mktemp -d)
    trap 'rm -rf "$src"' RETURN
    cp "$REPO/pyproject.toml" "$src/"
    [ ! -f "$REPO/README.md" ] || cp "$REPO/README.md" "$src/"
    tar -C "$REPO" --exclude=__pycache__ -cf - kws export runtime | tar -C "$src" -xf -
    rm -rf "$ROOT/opt/kws.tmp"
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
        --target "$ROOT/opt/kws.tmp" "$src" >"$ROOT/.kws-pip.log" 2>&1 \
        || { tail -5 "$ROOT/.kws-pip.log" >&2; die "cannot build the kws package from $REPO (log: $ROOT/.kws-pip.log)"; }
    rm -rf "$ROOT/opt/kws.tmp/bin"  # console scripts point at the host's python
    rm -rf "$ROOT/opt/kws"
    mv "$ROOT/opt/kws.tmp" "$ROOT/opt/kws"
    log "kws installed in $ROOT/opt/kws"
}

cmd_run() {
    [ $# -gt 0 ] || die "usage: $0 run CMD [ARG...]"
    [ -f "$STAMPS/wheels" ] || die "no root in $ROOT yet (run: $0 build)"
    need_tools "$QEMU"
    local cmd=$1
    shift
    case "$cmd" in
        /*) ;;
        *) cmd=/usr/bin/$cmd ;;
    esac
    # Python runs with -P: from the checkout, its kws/ directory (which lacks kws.runtime and kws.export, they
    # live beside it) would otherwise shadow the installed package.
    case "$cmd" in
        */python3*) set -- -P "$@" ;;
    esac
    # A clean environment, like a fresh login on the Pi; PYTHONPATH points at the installed packages.
    exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONPATH=/opt/kws:/opt/site PYTHONDONTWRITEBYTECODE=1 \
        ${PULSE_SERVER:+PULSE_SERVER=$PULSE_SERVER} \
        "$QEMU" -cpu "$CPU" -L "$ROOT" "$ROOT$cmd" "$@"
}

case "${1:-}" in
    build) cmd_build ;;
    install-kws) cmd_install_kws ;;
    run) shift; cmd_run "$@" ;;
    path) echo "$ROOT" ;;
    clean) rm -rf "$ROOT" "$ROOT.lock"; log "removed $ROOT" ;;
    *) echo "usage: $0 build|install-kws|run CMD [ARG...]|path|clean" >&2; exit 2 ;;
esac
