#!/usr/bin/env bash
# Tributary vs ejabberd vs Prosody (and a Mosquitto broker), side by side.
#
#   bench/run.sh            full run, writes bench/results/*.jsonl and bench/RESULTS.md
#   bench/run.sh --quick    smoke run (few clients, 3 s steps), writes bench/run/quick/
#   bench/run.sh --check    install, configure, start each server, register users,
#                           prove a SCRAM-SHA-1 STARTTLS login, stop; no load (bench/run/check/)
#   bench/run.sh --servers "tributary prosody"   only these (any of tributary ejabberd prosody)
#   bench/run.sh --no-install / --no-build       skip apt-get / cargo build
#
# Debian 12, as root, 2 cores: servers are pinned to core SERVER_CPU, the load
# generator (`tributary bench`) to core GEN_CPU. See bench/README.md.
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
RUN=$BENCH_DIR/run
CONFIGS=$BENCH_DIR/configs
TRIB=$REPO/target/release/tributary
BENCH_BIN=${BENCH_BIN:-$TRIB}            # the load generator: `$BENCH_BIN bench SCENARIO ...`
PLOT=$REPO/target/release/bench-plot     # PNG charts for RESULTS.md (crates/bench/src/plot.rs)

# --------------------------------------------------------------------------
# Parameters (each may be overridden from the environment: CHAT_RATES="..." bench/run.sh)
# --------------------------------------------------------------------------
# Each ladder of rates reaches past the highest rate Tributary sustained on
# this 2-core machine when it was set, so that a maximum is measured rather
# than the ladder's end (chat at 30,000 msg/s also takes most of the
# generator's core: see its CPU column).
SERVERS=${SERVERS:-"tributary ejabberd prosody"}
DOMAIN=localhost
PREFIX=${PREFIX:-bench}
PASSWORD=${PASSWORD:-bench}
MECHANISM=${MECHANISM:-SCRAM-SHA-1}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
LOG_LEVEL=${LOG_LEVEL:-warn}            # every server logs at warning level (see RESULTS.md)

# Ports on 127.0.0.1, away from the distro defaults (5222, 1883, ...) and
# below Linux's ephemeral range (32768-60999): thousands of generator
# connections take ephemeral ports, and a server port among them can be
# busy when its server starts (Prosody failed so once).
TRIB_PORT=${TRIB_PORT:-15222}
TRIB_COMPONENT_PORT=${TRIB_COMPONENT_PORT:-15275}
TRIB_COMPONENT_SECRET=${TRIB_COMPONENT_SECRET:-bench-collect-secret}
EJABBERD_PORT=${EJABBERD_PORT:-25222}
EJABBERD_NODE=bench-ejabberd@localhost  # also in configs/ejabberdctl.cfg
PROSODY_PORT=${PROSODY_PORT:-26222}
MQTT_PORT=${MQTT_PORT:-21883}
MQTTS_PORT=${MQTTS_PORT:-28883}

# Latency limit that defines "sustained" (with nothing lost or failed), and
# when to stop raising the rate.
P99_LIMIT_MS=${P99_LIMIT_MS:-50}         # chat, report, mqtt
LOGIN_P99_LIMIT_MS=${LOGIN_P99_LIMIT_MS:-200}  # login storm (TLS + SCRAM + bind per login)
MIN_ACHIEVED=${MIN_ACHIEVED:-0.95}       # achieved/offered below this also stops the steps
# A step that is not sustained is run again, up to STEP_TRIES tries in all,
# for every server alike: on this VM a single disk or scheduler stall of a
# few tens of ms fails a 20 s step, and without this one stall decided
# where a server's steps ended. A rate counts as sustained if one of its
# tries is; every try is recorded and shown in RESULTS.md.
STEP_TRIES=${STEP_TRIES:-3}
# A try during which the hypervisor took more than STEAL_VOID_PCT % of
# the server's core or of the generator's (steal time, /proc/stat) is void
# (a generator that loses its core sends and reads late, and the server's
# latency shows it): it does not count as one of the STEP_TRIES and the
# step is run again, at most STEAL_RETRIES more times per step, for every
# server alike. That holds for a try that passed as well: its latencies
# are the host's, not the server's, and RESULTS.md compares servers' p99
# at the same offered rate. A void try that passed still makes the rate
# sustained (steal only slows a server down), so its rerun only replaces
# the figures. Void tries stay in the results, marked so in RESULTS.md.
STEAL_VOID_PCT=${STEAL_VOID_PCT:-5}
STEAL_RETRIES=${STEAL_RETRIES:-3}
# Before every try, run.sh waits up to QUIET_WAIT_S seconds for a second
# in which neither core lost more than STEAL_VOID_PCT % to steal (then
# runs the try anyway): on 2026-11-27 the host took 26-64 % of the cores
# for ten minutes, which used up every void rerun of the steps it hit.
QUIET_WAIT_S=${QUIET_WAIT_S:-300}

# chat: CHAT_CLIENTS online clients send one-to-one messages to each other.
CHAT_CLIENTS=${CHAT_CLIENTS:-1000}
# The ladder goes past 60,000: Tributary sustained that top step in the run
# of 2026-11-28 (p99 38.75 ms), so its maximum was the ladder's end, not a
# measured limit.
CHAT_RATES=${CHAT_RATES:-"250 500 750 1000 2000 3000 5000 7500 10000 15000 20000 25000 30000 35000 40000 45000 50000 55000 60000 65000 70000 75000 80000"}   # msg/s offered, increasing
CHAT_SM=${CHAT_SM:---sm}                 # XEP-0198 on ("" to turn off)
DURATION=${DURATION:-20}                 # seconds measured per step
WARMUP=${WARMUP:-5}                      # seconds before measuring
# login storm: logins per second (connect, STARTTLS, SCRAM, bind, close).
LOGIN_CLIENTS=${LOGIN_CLIENTS:-1000}
# At 5,000/s (full run of 2026-11-28) Tributary and the generator (which
# computes SCRAM for every client) each used 19.5 CPU s of 20 and the step
# passed: this 2-core machine cannot offer much more, whatever the server.
LOGIN_RATES=${LOGIN_RATES:-"100 250 300 375 500 750 1000 1250 1500 2000 2500 3000 3500 4000 4500 5000"}
# idle: IDLE_CLIENTS sessions held for IDLE_DURATION s; RSS per session.
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
# Sessions are opened at half the server's max sustained login rate (from
# the login steps just before), capped at IDLE_CONNECT_RATE and at least
# IDLE_MIN_RATE: opened faster than the server can log them in, sessions
# time out half-way and the RSS figure measures a backlog, not sessions.
IDLE_CONNECT_RATE=${IDLE_CONNECT_RATE:-200}
IDLE_MIN_RATE=${IDLE_MIN_RATE:-20}
IDLE_DURATION=${IDLE_DURATION:-30}
# report (Tributary only): reports to collect.localhost, stored and confirmed
# by `tributary process`. 8,750 splits the gap between the last rate
# sustained and the first failed in the runs of 2026-11-27/28 (7,500 and
# 10,000), where single runs sustained 8,000 (bench/README.md).
REPORT_CLIENTS=${REPORT_CLIENTS:-1000}
REPORT_RATES=${REPORT_RATES:-"1000 1500 2000 2500 3000 4000 5000 6000 7500 8750 10000 12500 15000 20000"}
REPORT_SM=${REPORT_SM:---sm}
# drain (Tributary only): DRAIN_CLIENTS send DRAIN_RATE reports/s for
# DRAIN_SECONDS with the processor stopped (the backlog: rate x seconds,
# 1,000,000 as in the target), then `tributary bench` starts the processor
# and times the delivery.
DRAIN_CLIENTS=${DRAIN_CLIENTS:-100}
DRAIN_RATE=${DRAIN_RATE:-10000}
DRAIN_SECONDS=${DRAIN_SECONDS:-100}
# mqtt (Mosquitto, over TLS on MQTTS_PORT): QoS 1 publishes between the
# clients, each to its own topic; PUBACK and delivery latency.
MQTT_CLIENTS=${MQTT_CLIENTS:-1000}
# Mosquitto (one thread) used 19.7 CPU s of 20 at 50,000 msg/s on 2026-11-28.
MQTT_RATES=${MQTT_RATES:-"1000 2000 5000 7500 10000 12500 15000 20000 25000 30000 35000 40000 50000 55000 60000"}

MODE=full
DO_INSTALL=1
DO_BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --quick) MODE=quick; shift;;
        --check) MODE=check; shift;;
        --servers) SERVERS=$2; shift 2;;
        --no-install) DO_INSTALL=0; shift;;
        --no-build) DO_BUILD=0; shift;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
    esac
done

if [ "$MODE" = quick ]; then
    CHAT_CLIENTS=50;  CHAT_RATES="200 1000"
    LOGIN_CLIENTS=50; LOGIN_RATES="50 200"
    IDLE_CLIENTS=200; IDLE_CONNECT_RATE=100; IDLE_DURATION=3
    REPORT_CLIENTS=50; REPORT_RATES="200 1000"
    MQTT_CLIENTS=50;  MQTT_RATES="200 1000"
    DRAIN_CLIENTS=50; DRAIN_RATE=1000; DRAIN_SECONDS=3
    DURATION=3; WARMUP=1
    RESULTS=$RUN/quick/results
    RESULTS_MD=$RUN/quick/RESULTS.md
elif [ "$MODE" = check ]; then
    RESULTS=$RUN/check/results
    RESULTS_MD=$RUN/check/RESULTS.md
else
    RESULTS=$BENCH_DIR/results
    RESULTS_MD=$BENCH_DIR/RESULTS.md
fi
RESULTS=${RESULTS_DIR:-$RESULTS}         # override where results and RESULTS.md go
RESULTS_MD=${RESULTS_MD_OUT:-$RESULTS_MD}
NUSERS=$(printf '%s\n' "$CHAT_CLIENTS" "$LOGIN_CLIENTS" "$IDLE_CLIENTS" "$REPORT_CLIENTS" "$MQTT_CLIENTS" "$DRAIN_CLIENTS" | sort -n | tail -1)
LAST_USER=$PREFIX$((NUSERS - 1))
CERT=$RUN/tls/cert.pem
KEY=$RUN/tls/key.pem

log() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# Process helpers: every process we start has a pid file under $RUN; we stop
# only those pids, never by name.
# --------------------------------------------------------------------------
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# ours PID: alive and started by us: every process we start names $RUN on
# its command line (a pid file left from before a reboot may name a pid
# that now belongs to something else).
ours() { alive "${1:-}" && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF "$RUN/"; }

stop_pid() { # pidfile [seconds]
    local f=$1 t=${2:-15} pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq $((t * 10))); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then info "pid $pid did not stop in ${t}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$f"
}

# Run a command as the ejabberd user. Not with su (which ejabberdctl uses
# when started as root): su goes through PAM, whose pam_limits resets the
# open-files limit to PID 1's (1024 here and on a stock systemd machine),
# far too few for 10,000 sessions. setpriv keeps our raised limit, and
# ejabberdctl run as ejabberd itself does not su.
EJABBERD_HOME=$(getent passwd ejabberd 2>/dev/null | cut -d: -f6 || true)
as_ejabberd() {
    env HOME="${EJABBERD_HOME:-/var/lib/ejabberd}" setpriv --reuid=ejabberd --regid=ejabberd --init-groups "$@"
}
ejabberdctl_run() { # runs ejabberdctl against our node/config (cwd: its spool)
    (cd "$RUN/ejabberd/spool" && as_ejabberd ejabberdctl --config-dir "$RUN/ejabberd" --spool "$RUN/ejabberd/spool" \
        --logs "$RUN/ejabberd/logs" "$@")
}

stop_server() { # name
    case $1 in
        tributary)
            stop_pid "$RUN/tributary/process.pid"
            stop_pid "$RUN/tributary/server.pid";;
        ejabberd)
            if [ -f "$RUN/ejabberd/ejabberd.pid" ] && ours "$(cat "$RUN/ejabberd/ejabberd.pid")"; then
                ejabberdctl_run stop >/dev/null 2>&1 || true
                timeout 60 bash -c "while kill -0 $(cat "$RUN/ejabberd/ejabberd.pid") 2>/dev/null; do sleep 0.2; done" || true
                stop_pid "$RUN/ejabberd/ejabberd.pid"
                # ejabberdctl started epmd for the node; stop it if no node is left.
                if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
            fi
            rm -f "$RUN/ejabberd/ejabberd.pid" "$RUN/ejabberd/launcher.pid";;
        prosody)
            stop_pid "$RUN/prosody/prosody.pid"
            stop_pid "$RUN/prosody/launcher.pid";;
        mosquitto)
            stop_pid "$RUN/mosquitto/mosquitto.pid"
            stop_pid "$RUN/mosquitto/launcher.pid";;
    esac
}

stop_all() {
    local s
    for s in tributary ejabberd prosody mosquitto; do
        [ -d "$RUN/$s" ] && stop_server "$s"
    done
    return 0
}
trap 'rc=$?; stop_all; exit $rc' EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid seconds
    local i
    for i in $(seq $(($3 * 10))); do
        if ! port_free "$1"; then return 0; fi
        alive "$2" || return 1
        sleep 0.1
    done
    return 1
}
render() { # template out key=value...
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" > "$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"; fi
}
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
json_field() { # file field  -> field of the last JSON line
    python3 -c 'import json,sys
lines=[l for l in open(sys.argv[1]) if l.strip()]
v=json.loads(lines[-1]).get(sys.argv[2]) if lines else None
print("" if v is None else v)' "$1" "$2"
}

# --------------------------------------------------------------------------
# 1. Packages (reused when present) and the distro services they start
# --------------------------------------------------------------------------
install_packages() {
    local pkgs=(ejabberd prosody mosquitto mosquitto-clients openssl util-linux procps python3 erlang-base fonts-dejavu-core make)
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    else
        log "packages already installed: ${pkgs[*]}"
    fi
    # On a systemd machine the packages start their own daemons (ejabberd
    # and Prosody both on 5222, Mosquitto on 1883). Stop them so that they
    # neither hold ports nor take CPU during the measurements. (Not disabled:
    # they come back at the next boot.)
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        for p in ejabberd prosody mosquitto; do
            if systemctl is-active --quiet "$p" 2>/dev/null; then
                info "stopping the distro's $p service (systemctl stop $p)"
                systemctl stop "$p" || true
            fi
        done
    fi
}

# --------------------------------------------------------------------------
# 2. Run directory, certificate, limits
# --------------------------------------------------------------------------
prepare_run_dir() {
    log "run directory $RUN (recreated)"
    stop_all                      # leftovers of an earlier, interrupted run
    rm -rf "$RUN"
    mkdir -p "$RUN/tls" "$RUN/logs" "$RESULTS"
    chmod 755 "$RUN"
    # The one certificate for every server: self-signed, P-256, for localhost.
    # CA:FALSE matters: `openssl req -x509` marks the certificate CA:TRUE by
    # default, and rustls (the generator) then rejects it as its own trust
    # anchor with CaUsedAsEndEntity.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN,DNS:*.$DOMAIN,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
        -addext "extendedKeyUsage=serverAuth" -keyout "$KEY" -out "$CERT" 2>/dev/null
    info "certificate $CERT ($(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | cut -d= -f2 | cut -c1-23)...)"
    # The service users must be able to reach $RUN.
    local d=$RUN
    while [ "$d" != / ]; do
        [ -x "$d" ] && [ "$(stat -c %A "$d" | cut -c10)" = x ] || die "$d is not world-traversable; ejabberd/prosody run as their own users and need to reach $RUN"
        d=$(dirname "$d")
    done
}

raise_limits() {
    local hard
    hard=$(ulimit -Hn)
    ulimit -n "$hard" 2>/dev/null || true
    info "open files limit: $(ulimit -n) (hard $hard); inherited by every server and the generator"
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((IDLE_CLIENTS + 1000)) ]; then
        info "WARNING: $IDLE_CLIENTS idle sessions need more file descriptors than $hard"
    fi
}

# --------------------------------------------------------------------------
# 3. Servers: configure, register users, start pinned, check a login
# --------------------------------------------------------------------------
SERVER_PID=""
SERVER_PORT=""

record_cmd() { # server text...
    local s=$1; shift
    printf '%s\n' "$*" >> "$RESULTS/$s.commands.txt"
}

setup_tributary() {
    local d=$RUN/tributary t0
    mkdir -p "$d"
    render "$CONFIGS/tributary.toml" "$d/tributary.toml" RUN="$RUN" C2S_PORT="$TRIB_PORT" \
        COMPONENT_PORT="$TRIB_COMPONENT_PORT" COMPONENT_SECRET="$TRIB_COMPONENT_SECRET" CERT="$CERT" KEY="$KEY"
    "$TRIB" config check --config "$d/tributary.toml"
    t0=$(date +%s.%N)
    "$TRIB" user add "${PREFIX}0@$DOMAIN" --password "$PASSWORD" --config "$d/tributary.toml" >/dev/null
    # Bulk: `tributary user add` takes ~50 ms per account (one process each,
    # SCRAM derivation). SCRAM keys depend only on password, salt and
    # iterations, so the row of the account made by the CLI is copied under
    # the other names (same SQLite file, same columns; shared salt).
    python3 - "$d/data/tributary.sqlite" "$PREFIX" "$NUSERS" <<'EOF'
import sqlite3, sys
db, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
cols = "salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server"
c.executemany(f"INSERT OR IGNORE INTO accounts (user, {cols}) SELECT ?, {cols} FROM accounts WHERE user = ?",
              [(f"{prefix}{i}", f"{prefix}0") for i in range(1, n)])
c.commit()
print("   tributary: %d accounts" % c.execute("SELECT count(*) FROM accounts").fetchone()[0])
EOF
    info "registered $NUSERS users in $(elapsed "$t0") s"
    record_cmd tributary "$TRIB user add ${PREFIX}0@$DOMAIN --password $PASSWORD --config $d/tributary.toml  # then rows copied to ${PREFIX}1..${PREFIX}$((NUSERS-1)) with sqlite3"
}

start_tributary() {
    local d=$RUN/tributary
    port_free "$TRIB_PORT" || die "port $TRIB_PORT is in use"
    port_free "$TRIB_COMPONENT_PORT" || die "port $TRIB_COMPONENT_PORT is in use"
    RUST_LOG=$LOG_LEVEL setsid taskset -c "$SERVER_CPU" "$TRIB" serve --config "$d/tributary.toml" \
        > "$d/server.log" 2>&1 < /dev/null &
    echo $! > "$d/server.pid"
    record_cmd tributary "RUST_LOG=$LOG_LEVEL taskset -c $SERVER_CPU $TRIB serve --config $d/tributary.toml"
    wait_port "$TRIB_PORT" "$(cat "$d/server.pid")" 30 || { cat "$d/server.log"; die "tributary did not start"; }
    SERVER_PID=$(cat "$d/server.pid")
    SERVER_PORT=$TRIB_PORT
    # The reference processor, on the server's core: it is part of the
    # server side of the report scenario.
    RUST_LOG=$LOG_LEVEL setsid taskset -c "$SERVER_CPU" "$TRIB" process --server "127.0.0.1:$TRIB_COMPONENT_PORT" \
        --domain "collect.$DOMAIN" --secret "$TRIB_COMPONENT_SECRET" --db "sqlite://$d/reports.db" \
        > "$d/process.log" 2>&1 < /dev/null &
    echo $! > "$d/process.pid"
    record_cmd tributary "RUST_LOG=$LOG_LEVEL taskset -c $SERVER_CPU $TRIB process --server 127.0.0.1:$TRIB_COMPONENT_PORT --domain collect.$DOMAIN --secret $TRIB_COMPONENT_SECRET --db sqlite://$d/reports.db"
    sleep 1
    alive "$(cat "$d/process.pid")" || { cat "$d/process.log"; die "tributary process exited"; }
}

setup_ejabberd() {
    local d=$RUN/ejabberd lvl=$LOG_LEVEL
    [ "$lvl" = warn ] && lvl=warning
    mkdir -p "$d/spool" "$d/logs"
    cp "$CERT" "$KEY" "$d/"
    render "$CONFIGS/ejabberd.yml" "$d/ejabberd.yml" RUN="$RUN" C2S_PORT="$EJABBERD_PORT" \
        LOGLEVEL="$lvl" CACHE_SIZE="$((NUSERS * 2 > 1000 ? NUSERS * 2 : 1000))"
    render "$CONFIGS/ejabberdctl.cfg" "$d/ejabberdctl.cfg" RUN="$RUN"
    cp "$CONFIGS/ejabberd-inetrc" "$d/inetrc"
    chown -R ejabberd:ejabberd "$d"
    chmod 600 "$d/key.pem"
}

start_ejabberd() {
    local d=$RUN/ejabberd t0
    port_free "$EJABBERD_PORT" || die "port $EJABBERD_PORT is in use"
    if command -v epmd >/dev/null && epmd -names 2>/dev/null | grep -q "^name ${EJABBERD_NODE%@*} "; then
        die "an Erlang node named ${EJABBERD_NODE%@*} is already registered with epmd (an earlier run still alive?)"
    fi
    # ejabberdctl reads $d/ejabberdctl.cfg (not /etc/ejabberd's, whose
    # EJABBERD_CONFIG_PATH would override our config); run as the ejabberd
    # user (see as_ejabberd); the Erlang VM inherits the CPU affinity.
    (cd "$d/spool" && setsid taskset -c "$SERVER_CPU" env HOME="${EJABBERD_HOME:-/var/lib/ejabberd}" \
        setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
        ejabberdctl --config-dir "$d" --spool "$d/spool" --logs "$d/logs" foreground \
        > "$d/stdout.log" 2>&1 < /dev/null &
     echo $! > "$d/launcher.pid")
    record_cmd ejabberd "cd $d/spool && taskset -c $SERVER_CPU setpriv --reuid=ejabberd --regid=ejabberd --init-groups ejabberdctl --config-dir $d --spool $d/spool --logs $d/logs foreground  # HOME=$EJABBERD_HOME"
    ejabberdctl_run started >/dev/null 2>&1 || { tail -20 "$d/stdout.log" "$d/logs/"*.log; die "ejabberd did not start"; }
    wait_port "$EJABBERD_PORT" "$(cat "$d/ejabberd.pid")" 30 || die "ejabberd is not listening on $EJABBERD_PORT"
    grep -q "Loading configuration from $d/ejabberd.yml" "$d/logs/ejabberd.log" \
        || die "ejabberd did not load $d/ejabberd.yml (see $d/logs/ejabberd.log)"
    info "ejabberd loaded $d/ejabberd.yml (checked in its log)"
    SERVER_PID=$(cat "$d/ejabberd.pid")   # the beam.smp process
    SERVER_PORT=$EJABBERD_PORT
    # Users: one registered through ejabberdctl, the rest cloned from its
    # passwd record (ejabberd_clone_users.escript explains why).
    t0=$(date +%s.%N)
    ejabberdctl_run register "${PREFIX}0" "$DOMAIN" "$PASSWORD" >/dev/null
    cp "$BENCH_DIR/ejabberd_clone_users.escript" "$d/clone_users.escript"
    chown ejabberd:ejabberd "$d/clone_users.escript"
    (cd "$d/spool" && as_ejabberd escript "$d/clone_users.escript" "$EJABBERD_NODE" "$DOMAIN" "$PREFIX" "$NUSERS") \
        | sed 's/^/   /'
    info "registered $NUSERS users in $(elapsed "$t0") s"
    record_cmd ejabberd "ejabberdctl --config-dir $d --spool $d/spool --logs $d/logs register ${PREFIX}0 $DOMAIN $PASSWORD"
    record_cmd ejabberd "setpriv --reuid=ejabberd --regid=ejabberd --init-groups escript bench/ejabberd_clone_users.escript $EJABBERD_NODE $DOMAIN $PREFIX $NUSERS"
}

setup_prosody() {
    local d=$RUN/prosody t0
    mkdir -p "$d/data"
    cp "$CERT" "$KEY" "$d/"
    render "$CONFIGS/prosody.cfg.lua" "$d/prosody.cfg.lua" RUN="$RUN" C2S_PORT="$PROSODY_PORT" LOGLEVEL="$LOG_LEVEL"
    chown -R prosody:prosody "$d"
    chmod 600 "$d/key.pem"
    t0=$(date +%s.%N)
    # prosodyctl drops to the prosody user itself.
    prosodyctl --config "$d/prosody.cfg.lua" register "${PREFIX}0" "$DOMAIN" "$PASSWORD"
    # Bulk: prosodyctl takes ~150 ms per call. internal_hashed storage is one
    # Lua file per account (data/<host>/accounts/<user>.dat) holding salt,
    # iteration count and the SCRAM stored/server keys, which depend only
    # on password, salt and iterations: copy bench0's file for every name.
    python3 - "$d/data" "$DOMAIN" "$PREFIX" "$NUSERS" <<'EOF'
import os, pwd, sys
data, host, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# Prosody's datamanager file names: every non-alphanumeric byte as %xx.
enc = lambda s: "".join(c if c.isascii() and c.isalnum() else "%%%02x" % ord(c) for c in s)
acc = os.path.join(data, enc(host), "accounts")
src = open(os.path.join(acc, enc(prefix + "0") + ".dat"), "rb").read()
pw = pwd.getpwnam("prosody")
for i in range(1, n):
    p = os.path.join(acc, enc("%s%d" % (prefix, i)) + ".dat")
    with open(p, "wb") as f:
        f.write(src)
    os.chmod(p, 0o640)
    os.chown(p, pw.pw_uid, pw.pw_gid)
print("   prosody: %d account files" % len(os.listdir(acc)))
EOF
    info "registered $NUSERS users in $(elapsed "$t0") s"
    record_cmd prosody "prosodyctl --config $d/prosody.cfg.lua register ${PREFIX}0 $DOMAIN $PASSWORD  # then $d/data/$DOMAIN/accounts/${PREFIX}0.dat copied to ${PREFIX}1..${PREFIX}$((NUSERS-1)).dat"
}

start_prosody() {
    local d=$RUN/prosody
    port_free "$PROSODY_PORT" || die "port $PROSODY_PORT is in use"
    # Prosody refuses to run as root: setpriv execs it as prosody (same pid).
    (cd "$d" && setsid taskset -c "$SERVER_CPU" setpriv --reuid=prosody --regid=prosody --init-groups \
        prosody --config "$d/prosody.cfg.lua" -F > "$d/stdout.log" 2>&1 < /dev/null &
     echo $! > "$d/launcher.pid")
    record_cmd prosody "taskset -c $SERVER_CPU setpriv --reuid=prosody --regid=prosody --init-groups prosody --config $d/prosody.cfg.lua -F"
    wait_port "$PROSODY_PORT" "$(cat "$d/launcher.pid")" 30 || { cat "$d/stdout.log" "$d/prosody.log"; die "prosody did not start"; }
    # The launcher's pid is not Prosody's when setsid forks, and Prosody may
    # write its pidfile after it opens the port: wait for the pidfile, else
    # find the process (a wrong pid measures some other process's RSS/CPU).
    local i
    for i in $(seq 1 50); do [ -s "$d/prosody.pid" ] && break; sleep 0.2; done
    SERVER_PID=$(cat "$d/prosody.pid" 2>/dev/null || pgrep -u prosody -f -n "prosody --config $d/prosody.cfg.lua" || true)
    [ -n "$SERVER_PID" ] || die "cannot find Prosody's pid"
    SERVER_PORT=$PROSODY_PORT
}

setup_mosquitto() {
    local d=$RUN/mosquitto
    mkdir -p "$d/data"
    cp "$CERT" "$KEY" "$d/"
    render "$CONFIGS/mosquitto.conf" "$d/mosquitto.conf" RUN="$RUN" MQTT_PORT="$MQTT_PORT" MQTTS_PORT="$MQTTS_PORT"
    # The same accounts; mosquitto_passwd -U hashes a whole plaintext file at once.
    local i
    for ((i = 0; i < NUSERS; i++)); do printf '%s%d:%s\n' "$PREFIX" "$i" "$PASSWORD"; done > "$d/passwd"
    mosquitto_passwd -U "$d/passwd"
    chown -R mosquitto:mosquitto "$d"
    chmod 600 "$d/key.pem" "$d/passwd"
}

start_mosquitto() {
    local d=$RUN/mosquitto
    port_free "$MQTT_PORT" || die "port $MQTT_PORT is in use"
    port_free "$MQTTS_PORT" || die "port $MQTTS_PORT is in use"
    setsid taskset -c "$SERVER_CPU" mosquitto -c "$d/mosquitto.conf" > "$d/stdout.log" 2>&1 < /dev/null &
    echo $! > "$d/launcher.pid"        # mosquitto writes mosquitto.pid itself, as its own user
    record_cmd mosquitto "taskset -c $SERVER_CPU mosquitto -c $d/mosquitto.conf"
    wait_port "$MQTTS_PORT" "$(cat "$d/launcher.pid")" 30 || { cat "$d/stdout.log" "$d/mosquitto.log"; die "mosquitto did not start"; }
    # --server-pid must be the broker itself (its CPU and RSS are sampled).
    # setsid and taskset exec in place here, so the launcher's pid is
    # normally the broker's; mosquitto.pid, written by the broker once it
    # has dropped to its user, says so for sure. Checked by name.
    local pid="" i comm
    for i in $(seq 50); do
        pid=$(cat "$d/mosquitto.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || pid=$(cat "$d/launcher.pid")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo gone)
    [ "$comm" = mosquitto ] || die "mosquitto: pid $pid is '$comm', not the broker"
    SERVER_PID=$pid
    SERVER_PORT=$MQTTS_PORT
}

check_xmpp() { # server
    local s=$1
    log "$s: SCRAM-SHA-1 login over STARTTLS as $LAST_USER (bench/xmpp_check.py)"
    python3 "$BENCH_DIR/xmpp_check.py" --server "127.0.0.1:$SERVER_PORT" --domain "$DOMAIN" \
        --user "$LAST_USER" --password "$PASSWORD" --ca "$CERT" --label "$s" --json > "$RUN/logs/$s-check.out" \
        || { cat "$RUN/logs/$s-check.out"; die "$s: login check failed"; }
    head -1 "$RUN/logs/$s-check.out" | sed 's/^/   /'
    tail -1 "$RUN/logs/$s-check.out" > "$RESULTS/$s.check.json"
}

check_mosquitto() {
    local d=$RUN/mosquitto out
    log "mosquitto: QoS 1 publish/subscribe over TLS as ${PREFIX}0 / ${PREFIX}1 (mosquitto_pub/sub)"
    mosquitto_sub -h 127.0.0.1 -p "$MQTTS_PORT" --cafile "$CERT" -u "${PREFIX}1" -P "$PASSWORD" \
        -q 1 -t bench/check -C 1 -W 10 -i bench-check-sub > "$RUN/logs/mosquitto-check.out" 2>&1 &
    local sub=$!
    sleep 0.5
    mosquitto_pub -h 127.0.0.1 -p "$MQTTS_PORT" --cafile "$CERT" -u "${PREFIX}0" -P "$PASSWORD" \
        -q 1 -t bench/check -m "bench check" -i bench-check-pub -d > "$RUN/logs/mosquitto-pub.out" 2>&1 \
        || { cat "$RUN/logs/mosquitto-pub.out"; die "mosquitto: publish failed"; }
    wait "$sub" || true
    grep -q 'received PUBACK' "$RUN/logs/mosquitto-pub.out" || die "mosquitto: no PUBACK"
    grep -q 'bench check' "$RUN/logs/mosquitto-check.out" || die "mosquitto: subscriber got nothing"
    info "OK mosquitto 127.0.0.1:$MQTTS_PORT: TLS, password auth, QoS 1 PUBACK and delivery"
    printf '{"label": "mosquitto", "ok": true, "server": "127.0.0.1:%s", "tls": true, "qos": 1}\n' "$MQTTS_PORT" > "$RESULTS/mosquitto.check.json"
}

server_info() { # server -> facts for RESULTS.md
    local s=$1 pid=$SERVER_PID
    python3 - "$s" "$pid" "$(taskset -pc "$pid" 2>/dev/null | awk -F': ' '{print $2}')" \
        "$(awk '/Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null)" \
        "$(ls "/proc/$pid/task" 2>/dev/null | wc -l)" "$(rss_kb "$pid")" > "$RESULTS/$s.server.json" <<'EOF'
import json, sys
s, pid, aff, nofile, threads, rss = sys.argv[1:]
print(json.dumps({"server": s, "pid": int(pid), "cpu_affinity": aff, "max_open_files": nofile,
                  "threads": int(threads), "rss_kb_after_start": int(rss or 0)}))
EOF
}

# --------------------------------------------------------------------------
# 4. Load: `tributary bench` pinned to GEN_CPU
# --------------------------------------------------------------------------
HAVE_BENCH=0
BENCH_SCENARIOS=""
detect_bench() {
    if [ -x "$BENCH_BIN" ] && "$BENCH_BIN" bench --help > "$RUN/logs/bench-help.txt" 2>&1; then
        HAVE_BENCH=1
        BENCH_SCENARIOS=$(grep -Eow 'chat|report|login|idle|mqtt|drain' "$RUN/logs/bench-help.txt" | sort -u | tr '\n' ' ')
        info "tributary bench found; scenarios mentioned in its help: $BENCH_SCENARIOS"
    else
        info "tributary bench not available in $BENCH_BIN: load scenarios are skipped"
    fi
}
has_scenario() { [[ " $BENCH_SCENARIOS " == *" $1 "* ]]; }

# core_steal -> prints the steal % of the server's and the generator's
# core over one second; exits 0 if neither is over STEAL_VOID_PCT.
core_steal() {
    python3 - "$SERVER_CPU" "$GEN_CPU" "$STEAL_VOID_PCT" <<'EOF'
import sys, time
cores = ["cpu" + c for c in sys.argv[1:3]]
def sample():
    out = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] in cores:
            v = [int(x) for x in f[1:]]
            out[f[0]] = (v[7], sum(v[:8]))  # steal, all time but guest
    return out
a = sample(); time.sleep(1); b = sample()
pct = [100.0 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in cores]
print("%.1f / %.1f" % tuple(pct))
sys.exit(0 if max(pct) <= float(sys.argv[3]) else 1)
EOF
}

# await_quiet: waits (at most QUIET_WAIT_S) until core_steal says quiet.
await_quiet() {
    local t0=$SECONDS waited=0 steal
    until steal=$(core_steal); do
        if [ $((SECONDS - t0)) -ge "$QUIET_WAIT_S" ]; then
            info "host still busy after ${QUIET_WAIT_S}s ($steal % steal on the server's / the generator's core): running anyway"
            return
        fi
        [ "$waited" = 1 ] || info "host busy ($steal % steal on the server's / the generator's core): waiting up to ${QUIET_WAIT_S}s for a quiet second"
        waited=1
        sleep 2
    done
    [ "$waited" = 0 ] || info "quiet again after $((SECONDS - t0))s"
}

# gen server scenario [extra args...]; appends one JSON line to $RESULTS/<server>.jsonl
gen() {
    local s=$1 sc=$2; shift 2
    local out=$RESULTS/$s.jsonl
    local cmd=(taskset -c "$GEN_CPU" "$BENCH_BIN" bench "$sc" --server "127.0.0.1:$SERVER_PORT" --domain "$DOMAIN"
               --user-prefix "$PREFIX" --password "$PASSWORD" --ca "$CERT"
               --server-pid "$SERVER_PID" --label "$s" --json "$out" "$@")
    [ "$sc" = mqtt ] || cmd+=(--mechanism "$MECHANISM")
    record_cmd "$s" "${cmd[*]}"
    local before=0
    [ -f "$out" ] && before=$(wc -l < "$out")
    local logf=$RUN/logs/$s-$sc.log
    echo "\$ ${cmd[*]}" >> "$logf"
    await_quiet
    if ! "${cmd[@]}" >> "$logf" 2>&1; then
        info "generator exited non-zero (see $logf):"; tail -5 "$logf" | sed 's/^/     /'
        [ -f "$out" ] && [ "$(wc -l < "$out")" -gt "$before" ] || return 1
    fi
    [ -f "$out" ] && [ "$(wc -l < "$out")" -gt "$before" ] || { info "no JSON line written (see $logf)"; return 1; }
    python3 - "$out" <<'EOF'
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.strip()][-1])
f = lambda k: r.get(k, "?")
print("   %-9s %-6s clients=%s offered=%s/s achieved=%s/s count=%s lost=%s p50=%s p99=%s p99.9=%s max=%s ms server_cpu=%ss rss=%s->%s kB" % (
    f("label"), f("scenario"), f("clients"), f("offered_rate"), f("achieved_rate"), f("count"), f("lost"),
    f("p50_ms"), f("p99_ms"), f("p999_ms"), f("max_ms"), f("server_cpu_s"), f("server_rss_before_kb"), f("server_rss_after_kb")))
EOF
}

# verdict server limit_ms rate -> 0 if the last step was sustained
sustained() {
    python3 - "$RESULTS/$1.jsonl" "$2" "$MIN_ACHIEVED" <<'EOF'
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.strip()][-1])
limit, min_ach = float(sys.argv[2]), float(sys.argv[3])
ok = (r.get("p99_ms") is not None and r["p99_ms"] <= limit and not r.get("lost") and not r.get("failed")
      and (not r.get("offered_rate") or (r.get("achieved_rate") or 0) >= min_ach * r["offered_rate"]))
sys.exit(0 if ok else 1)
EOF
}

# fsync_probe label: the latency of a 4 KiB write + fsync in $RUN (the
# disk every server's data is on), 200 times; one JSON line in
# $RESULTS/fsync.jsonl. Tributary acknowledges a report only after its
# commit's fsync, so its report figures move with this disk's latency,
# which on a VM changes from minute to minute.
fsync_probe() {
    python3 - "$RUN" "$1" >> "$RESULTS/fsync.jsonl" <<'EOF'
import json, os, sys, time
d, label = sys.argv[1], sys.argv[2]
path = os.path.join(d, "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block, ms = os.urandom(4096), []
try:
    for i in range(200):
        t = time.perf_counter()
        os.pwrite(fd, block, i * 4096)
        os.fsync(fd)
        ms.append((time.perf_counter() - t) * 1000)
finally:
    os.close(fd)
    os.unlink(path)
ms.sort()
print(json.dumps({"label": label, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "count": len(ms),
                  "p50_ms": round(ms[len(ms) // 2], 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3),
                  "max_ms": round(ms[-1], 3)}))
EOF
}

# cpu_probe label: how long a fixed piece of work takes on the server's
# core and on the generator's (SHA-256 of a 64 KiB buffer 4,096 times: 256
# MiB, in cache; median of 5); one JSON line in $RESULTS/cpu.jsonl. Steal
# time does not show other guests sharing a core's caches or its
# hyper-thread sibling: one evening the same binary took 13.4 CPU s for a
# chat step at 30,000 msg/s in one run and 19.0-19.6 s in the next, with
# under 1 % steal in both. Figures from runs with different probe times
# are not comparable; ratios within a run still are.
cpu_probe() {
    python3 - "$1" "$SERVER_CPU" "$GEN_CPU" >> "$RESULTS/cpu.jsonl" <<'EOF'
import hashlib, json, os, statistics, sys, time
label, cores = sys.argv[1], [int(c) for c in sys.argv[2:]]
buf, ms = os.urandom(64 * 1024), []
for core in cores:
    os.sched_setaffinity(0, {core})
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4096):
            hashlib.sha256(buf).digest()
        runs.append((time.perf_counter() - t) * 1000)
    ms.append(round(statistics.median(runs), 1))
print(json.dumps({"label": label, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                  "server_core_ms": ms[0], "gen_core_ms": ms[1]}))
EOF
}

# idle_rate server -> logins/s for opening the idle sessions (see IDLE_CONNECT_RATE)
idle_rate() {
    python3 - "$RESULTS/$1.jsonl" "$LOGIN_P99_LIMIT_MS" "$MIN_ACHIEVED" "$IDLE_CONNECT_RATE" "$IDLE_MIN_RATE" <<'EOF'
import json, sys
path, limit, min_ach, cap, floor = sys.argv[1], *map(float, sys.argv[2:])
try:
    rows = [json.loads(l) for l in open(path) if l.strip()]
except OSError:
    rows = []
logins = [r for r in rows if r.get("scenario") == "login"]
ok = [r["offered_rate"] for r in logins
      if r.get("p99_ms") is not None and r["p99_ms"] <= limit and not r.get("lost") and not r.get("failed")
      and (r.get("achieved_rate") or 0) >= min_ach * r["offered_rate"]]
rate = cap if not logins else max(floor, min(cap, max(ok) / 2)) if ok else floor
print("%g" % rate)
EOF
}

# stolen server -> prints the last try's steal % on the server's and the
# generator's core and exits 0 if either was over STEAL_VOID_PCT; records
# the try in $RESULTS/void.jsonl then.
stolen() {
    python3 - "$RESULTS/$1.jsonl" "$STEAL_VOID_PCT" "$RESULTS/void.jsonl" <<'EOF'
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.strip()][-1])
server, generator = r.get("steal_pct"), r.get("generator_steal_pct")
print("%s / %s" % (server, generator))
if max(x for x in (server, generator, 0.0) if x is not None) <= float(sys.argv[2]):
    sys.exit(1)
with open(sys.argv[3], "a") as f:
    f.write(json.dumps({"server": r.get("server"), "label": r.get("label"), "timestamp": r.get("timestamp"),
                        "steal_pct": server, "generator_steal_pct": generator}) + "\n")
EOF
}

# step server scenario limit_ms rate [gen args...]: runs one offered rate up
# to STEP_TRIES times (void tries aside, see STEAL_VOID_PCT), until a try is
# sustained (exit 0); exit 1 if none is, 2 if the generator failed.
# STEP_HOOK, if set, is run after every try with the rate as its argument.
step() {
    local s=$1 sc=$2 limit=$3 r=$4; shift 4
    local t=0 void=0 passed=0 steal
    while [ "$t" -lt "$STEP_TRIES" ]; do
        t=$((t + 1))
        [ "$t" = 1 ] || [ "$passed" = 1 ] || info "not sustained at $r/s: try $t of $STEP_TRIES"
        gen "$s" "$sc" --rate "$r" "$@" || return 2
        [ -z "${STEP_HOOK:-}" ] || "$STEP_HOOK" "$r"
        if sustained "$s" "$limit"; then passed=1; fi
        if [ "$void" -lt "$STEAL_RETRIES" ] && steal=$(stolen "$s"); then
            void=$((void + 1))
            t=$((t - 1))
            info "try void: $steal % steal on the server's / the generator's core (over $STEAL_VOID_PCT %); run again"
            continue
        fi
        if [ "$passed" = 1 ]; then return 0; fi
    done
    return 1
}

# steps server scenario limit_ms clients rates [extra args...]
steps() {
    local s=$1 sc=$2 limit=$3 clients=$4 rates=$5; shift 5
    local r rc
    log "$s: $sc, $clients clients, offered rates $rates /s (${WARMUP}s warm-up + ${DURATION}s each; stop once p99 > ${limit} ms, a loss, or achieved < ${MIN_ACHIEVED} x offered in each of $STEP_TRIES tries)"
    for r in $rates; do
        rc=0
        step "$s" "$sc" "$limit" "$r" --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" "$@" || rc=$?
        case $rc in
            0) ;;
            1) info "not sustained at $r/s in $STEP_TRIES tries: no higher rates"; break;;
            *) info "stopping $sc steps"; break;;
        esac
    done
}

# The processor is a second process on the server side; its CPU for each
# report try (warm-up included) is recorded next to the generator's line.
PROC_CPU_T0=0
record_processor_cpu() { # rate
    local ppid t1
    ppid=$(cat "$RUN/tributary/process.pid")
    t1=$(cpu_ticks "$ppid")
    printf '{"scenario": "report", "offered_rate": %s, "processor_cpu_s": %s, "processor_rss_kb": %s}\n' \
        "$1" "$(awk -v a="$PROC_CPU_T0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz}')" "$(rss_kb "$ppid")" >> "$RESULTS/tributary.processor.jsonl"
    PROC_CPU_T0=$t1
}

run_scenarios() {
    local s=$1
    if [ "$HAVE_BENCH" != 1 ]; then return 0; fi
    if has_scenario chat; then steps "$s" chat "$P99_LIMIT_MS" "$CHAT_CLIENTS" "$CHAT_RATES" $CHAT_SM; fi
    if has_scenario login; then steps "$s" login "$LOGIN_P99_LIMIT_MS" "$LOGIN_CLIENTS" "$LOGIN_RATES"; fi
    if has_scenario idle; then
        local irate
        irate=$(idle_rate "$s")
        log "$s: idle, $IDLE_CLIENTS sessions opened at $irate/s and held ${IDLE_DURATION}s"
        gen "$s" idle --clients "$IDLE_CLIENTS" --rate "$irate" --duration "$IDLE_DURATION" || true
    fi
    if [ "$s" = tributary ] && has_scenario report; then
        fsync_probe "before the report steps"
        cpu_probe "before the report steps"
        PROC_CPU_T0=$(cpu_ticks "$(cat "$RUN/tributary/process.pid")")
        STEP_HOOK=record_processor_cpu steps tributary report "$P99_LIMIT_MS" "$REPORT_CLIENTS" "$REPORT_RATES" \
            --to "collect.$DOMAIN" $REPORT_SM
    fi
    if [ "$s" = tributary ] && has_scenario drain; then
        local d=$RUN/tributary proc_cmd
        log "tributary: drain, $((DRAIN_RATE * DRAIN_SECONDS)) reports queued by $DRAIN_CLIENTS clients with the processor stopped, then delivered"
        fsync_probe "before the drain"
        stop_pid "$d/process.pid"
        # A fresh reports table: the drain's rows are counted on their own.
        rm -f "$d"/reports.db*
        proc_cmd="env RUST_LOG=$LOG_LEVEL taskset -c $SERVER_CPU $TRIB process --server 127.0.0.1:$TRIB_COMPONENT_PORT --domain collect.$DOMAIN --secret $TRIB_COMPONENT_SECRET --db sqlite://$d/reports.db"
        gen tributary drain --to "collect.$DOMAIN" --clients "$DRAIN_CLIENTS" --rate "$DRAIN_RATE" \
            --duration "$DRAIN_SECONDS" --sm --drain-timeout 900 --processor-cmd "$proc_cmd" || info "drain failed"
    fi
}

# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts servers as their own users)"
for s in $SERVERS; do
    case $s in tributary|ejabberd|prosody) ;; *) die "unknown server '$s' (tributary ejabberd prosody)";; esac
done
NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then
    echo "WARNING: $NCPU core: server and generator share core 0" >&2
    SERVER_CPU=0; GEN_CPU=0
fi

log "mode: $MODE; servers: $SERVERS; users: $NUSERS; server on core $SERVER_CPU, generator on core $GEN_CPU"
[ "$DO_INSTALL" = 1 ] && install_packages
if [ "$DO_BUILD" = 1 ]; then
    log "cargo build --release -p tributary -p tributary-bench --bins"
    (cd "$REPO" && cargo build --release -p tributary -p tributary-bench --bins)
fi
[ -x "$TRIB" ] || die "$TRIB not built"

prepare_run_dir
raise_limits
# Results of the servers being run now are replaced; others' are kept.
rm -f "$RESULTS/fsync.jsonl" "$RESULTS/void.jsonl" "$RESULTS/cpu.jsonl"
fsync_probe "at the start"
for s in $SERVERS mosquitto; do
    rm -f "$RESULTS/$s.jsonl" "$RESULTS/$s.commands.txt" "$RESULTS/$s.check.json" "$RESULTS/$s.server.json" \
          "$RESULTS/$s.processor.jsonl" "$RESULTS/$s.setup.json"
done
detect_bench
python3 - "$RESULTS/run.json" "$MODE" "$SERVERS" "$HAVE_BENCH" "$BENCH_SCENARIOS" <<EOF
import json, sys, time
out, mode, servers, have_bench, scen = sys.argv[1:]
def busy_pct():
    # Share of CPU time all cores spent busy over 2 s, before any server starts:
    # anything else running on the machine competes with the benchmark.
    def sample():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(f), f[3] + f[4]
    t0, i0 = sample(); time.sleep(2); t1, i1 = sample()
    return round(100.0 * (1 - (i1 - i0) / max(1, t1 - t0)), 1)
json.dump({"mode": mode, "servers": servers.split(), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "loadavg_at_start": " ".join(open("/proc/loadavg").read().split()[:3]),
           "cpu_busy_at_start_pct": busy_pct(),
           "have_bench": have_bench == "1", "bench_scenarios": scen.split(),
           "params": {"server_cpu": $SERVER_CPU, "gen_cpu": $GEN_CPU, "log_level": "$LOG_LEVEL",
                      "p99_limit_ms": $P99_LIMIT_MS, "login_p99_limit_ms": $LOGIN_P99_LIMIT_MS,
                      "min_achieved": $MIN_ACHIEVED, "step_tries": $STEP_TRIES, "users": $NUSERS,
                      "steal_void_pct": $STEAL_VOID_PCT, "steal_void_cores": "server, generator", "steal_void_passed": True, "steal_retries": $STEAL_RETRIES, "quiet_wait_s": $QUIET_WAIT_S,
                      "chat_clients": $CHAT_CLIENTS, "chat_rates": "$CHAT_RATES", "chat_sm": "$CHAT_SM",
                      "duration_s": $DURATION, "warmup_s": $WARMUP,
                      "login_clients": $LOGIN_CLIENTS, "login_rates": "$LOGIN_RATES",
                      "idle_clients": $IDLE_CLIENTS, "idle_connect_rate": $IDLE_CONNECT_RATE, "idle_min_rate": $IDLE_MIN_RATE, "idle_duration_s": $IDLE_DURATION,
                      "report_clients": $REPORT_CLIENTS, "report_rates": "$REPORT_RATES", "report_sm": "$REPORT_SM",
                      "drain_clients": $DRAIN_CLIENTS, "drain_rate": $DRAIN_RATE, "drain_seconds": $DRAIN_SECONDS,
                      "mqtt_clients": $MQTT_CLIENTS, "mqtt_rates": "$MQTT_RATES",
                      "ports": {"tributary": $TRIB_PORT, "ejabberd": $EJABBERD_PORT, "prosody": $PROSODY_PORT,
                                "mosquitto_mqtt": $MQTT_PORT, "mosquitto_mqtts": $MQTTS_PORT}}},
          open(out, "w"), indent=1)
EOF

for s in $SERVERS; do
    log "$s: configure and start (pinned to core $SERVER_CPU)"
    cpu_probe "before $s"
    t_setup=$(date +%s.%N)
    case $s in
        tributary) setup_tributary; start_tributary;;
        ejabberd)  setup_ejabberd;  start_ejabberd;;
        prosody)   setup_prosody;   start_prosody;;
    esac
    info "$s up: pid $SERVER_PID, 127.0.0.1:$SERVER_PORT ($(elapsed "$t_setup") s incl. $NUSERS users)"
    server_info "$s"
    check_xmpp "$s"
    [ "$MODE" = check ] || run_scenarios "$s"
    log "$s: stop"
    stop_server "$s"
    SERVER_PID=""
done

cpu_probe "before mosquitto"
log "mosquitto: configure and start (pinned to core $SERVER_CPU)"
setup_mosquitto
start_mosquitto
server_info mosquitto
check_mosquitto
if [ "$MODE" != check ] && [ "$HAVE_BENCH" = 1 ] && has_scenario mqtt; then
    steps mosquitto mqtt "$P99_LIMIT_MS" "$MQTT_CLIENTS" "$MQTT_RATES"
else
    info "MQTT load: not run (check mode, or no mqtt scenario in tributary bench); broker set up and checked only"
fi
log "mosquitto: stop"
stop_server mosquitto

# Charts beside the JSON lines; report.py links each one that exists. A
# failure here costs the charts only, not the measurements.
log "charts: $PLOT --results $RESULTS --out $RESULTS"
if [ -x "$PLOT" ]; then
    "$PLOT" --results "$RESULTS" --out "$RESULTS" || info "bench-plot failed: RESULTS.md will have no charts"
else
    info "$PLOT not built (--no-build?): RESULTS.md will have no charts"
fi
fsync_probe "at the end"
cpu_probe "at the end"
log "writing $RESULTS_MD"
python3 "$BENCH_DIR/report.py" --snapshot --results "$RESULTS" --out "$RESULTS_MD" --repo "$REPO"
info "done: $RESULTS_MD"
