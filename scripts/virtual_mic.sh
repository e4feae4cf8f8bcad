#!/usr/bin/env bash
# A virtual microphone for tests and demos on machines without a sound card (CI, containers).
#
#   scripts/virtual_mic.sh start    # start it (idempotent); prints `export PULSE_SERVER=...` on stdout
#   scripts/virtual_mic.sh stop     # stop it (idempotent)
#   scripts/virtual_mic.sh status   # exit 0 when it is up and delivering audio
#   scripts/virtual_mic.sh env      # print the `export PULSE_SERVER=...` line
#
# What it builds: a private PulseAudio server (its own runtime directory, so a desktop's own server is left
# alone) with a null sink whose monitor is the default source. Anything played into the sink (`paplay x.wav`)
# comes out of the default microphone: PortAudio (sounddevice) opens ALSA's "default" device, which
# libasound2-plugins routes to PulseAudio whenever a server is reachable. A keep-alive stream of silence
# (`pacat` from /dev/zero) keeps the sink running, otherwise capture stalls while nothing plays.
#
# Clients find the server through PULSE_SERVER, so use it as:
#   eval "$(scripts/virtual_mic.sh start)"
#   kws listen &  paplay some.wav
#
# Settings (environment): KWS_PULSE_DIR (runtime directory, default /tmp/kws-pulse-$UID), KWS_MIC_SINK (sink
# name, default kws_mic), KWS_MIC_RATE (sink sample rate in Hz, default 16000), KWS_MIC_CHANNELS (default 1).
# Needs: pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 (see .ci/install-system.sh).
set -euo pipefail

PULSE_DIR="${KWS_PULSE_DIR:-/tmp/kws-pulse-$(id -u)}"
SINK="${KWS_MIC_SINK:-kws_mic}"
RATE="${KWS_MIC_RATE:-16000}"
CHANNELS="${KWS_MIC_CHANNELS:-1}"
READY_TIMEOUT_S=15     # longest wait for the server socket and for audio to flow
KEEPALIVE_LATENCY_MS=50  # latency the keep-alive stream asks for (sets the sink's block size)
WARMUP_S=1             # settle time after the first audio flows, before reporting ready

export PULSE_RUNTIME_PATH="$PULSE_DIR"
export PULSE_SERVER="unix:$PULSE_DIR/native"
KEEPALIVE_PID="$PULSE_DIR/keepalive.pid"

log() { echo "virtual_mic: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_tools() {
    local tool missing=()
    for tool in pulseaudio pactl pacat parec; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} (apt-get install pulseaudio pulseaudio-utils)"
}

server_up() { pactl info >/dev/null 2>&1; }

sink_loaded() { pactl list short sinks 2>/dev/null | awk '{print $2}' | grep -qx "$SINK"; }

keepalive_running() {
    [ -f "$KEEPALIVE_PID" ] && kill -0 "$(cat "$KEEPALIVE_PID")" 2>/dev/null
}

# True when the monitor source delivers at least 0.1 s of audio in a 1 s recording.
audio_flows() {
    local want=$((RATE * CHANNELS * 2 / 10)) got
    got=$(timeout 1 parec --latency-msec=20 --raw --device="$SINK.monitor" --rate="$RATE" \
        --channels="$CHANNELS" --format=s16le 2>/dev/null | wc -c) || true
    [ "$got" -ge "$want" ]
}

start_server() {
    mkdir -p "$PULSE_DIR"
    chmod 700 "$PULSE_DIR"
    # -n: no default.pa (no hardware detection, no D-Bus, no X11); only the native protocol on our socket.
    # No shared memory: audio goes over the socket (plenty for one mono stream; nothing to size in /dev/shm).
    # As root PulseAudio warns that it is meant for a user session; that works fine for a private server.
    pulseaudio --daemonize=yes --exit-idle-time=-1 --disallow-exit=yes --disable-shm=yes \
        -n --load="module-native-protocol-unix auth-anonymous=1 socket=$PULSE_DIR/native" \
        --log-target="file:$PULSE_DIR/pulseaudio.log" \
        || die "pulseaudio did not start (log: $PULSE_DIR/pulseaudio.log)"
    local waited=0
    until server_up; do
        sleep 0.2
        waited=$((waited + 1))
        [ $waited -lt $((READY_TIMEOUT_S * 5)) ] || die "server socket not ready after ${READY_TIMEOUT_S}s"
    done
}

start_keepalive() {
    # setsid + nohup: the stream outlives this script and the shell that ran it.
    # A short latency matters: the null sink renders in blocks of the smallest latency its streams ask for,
    # and pacat's default (2 s) would make the microphone deliver audio in 2 s bursts.
    setsid nohup pacat --playback --latency-msec=$KEEPALIVE_LATENCY_MS --raw --device="$SINK" --rate="$RATE" --channels="$CHANNELS" \
        --format=s16le --client-name=kws-keepalive /dev/zero >/dev/null 2>&1 &
    echo $! >"$KEEPALIVE_PID"
}

cmd_start() {
    need_tools
    local started=no
    server_up || { log "starting PulseAudio in $PULSE_DIR"; start_server; started=yes; }
    if ! sink_loaded; then
        started=yes
        pactl load-module module-null-sink sink_name="$SINK" rate="$RATE" channels="$CHANNELS" \
            format=s16le sink_properties=device.description=kws-virtual-mic >/dev/null
    fi
    pactl set-default-sink "$SINK"
    pactl set-default-source "$SINK.monitor"
    keepalive_running || { start_keepalive; started=yes; }
    local waited=0
    until audio_flows; do
        waited=$((waited + 1))
        [ $waited -lt "$READY_TIMEOUT_S" ] || die "no audio from $SINK.monitor after ${READY_TIMEOUT_S}s"
    done
    [ "$started" = no ] || sleep "$WARMUP_S"
    log "ready: default source $SINK.monitor (${RATE} Hz, ${CHANNELS} ch); play into it with paplay"
    cmd_env
}

cmd_stop() {
    if keepalive_running; then kill "$(cat "$KEEPALIVE_PID")" 2>/dev/null || true; fi
    rm -f "$KEEPALIVE_PID"
    if [ -f "$PULSE_DIR/pid" ]; then
        local pid
        pid=$(cat "$PULSE_DIR/pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    rm -rf "$PULSE_DIR"
    log "stopped"
}

cmd_status() {
    server_up || { log "server not running ($PULSE_SERVER)"; return 1; }
    sink_loaded || { log "sink $SINK missing"; return 1; }
    keepalive_running || { log "keep-alive stream not running"; return 1; }
    audio_flows || { log "no audio from $SINK.monitor"; return 1; }
    log "up: $PULSE_SERVER, default source $SINK.monitor"
}

cmd_env() { echo "export PULSE_SERVER=$PULSE_SERVER"; }

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
