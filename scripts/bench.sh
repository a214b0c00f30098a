#!/usr/bin/env bash
# bench.sh: throughput of dbs at the limit of this machine, in one run, in a private network
# namespace (loopback only, multicast groups 239.77.x.x, interface 127.0.0.1).
#
#  1. Raw limits (target/release/dbs-bench): the highest loss-free paced rate of 64,000-byte
#     multicast datagrams to N-1 receiving processes (receive buffers as the peers have them);
#     the rate at which the disk holding the peer trees takes 64,000-byte chunk files made
#     durable (stage + group commit, as a peer does), with 1 tree and with as many trees written
#     at once as a backup has storing peers; and the rate of one file written in chunk-sized
#     pieces then fsynced (as a restore writes). copies = chunk copies written per chunk
#     (protocol 1.0: every peer but the initiator stores every chunk, so copies = N-1). Limits
#     (the issue's): backup min(multicast, disk with `copies` trees / copies); restore
#     min(multicast, disk), disk being the best chunk-file rate measured (1 or `copies` trees).
#     The restore is also compared with min(multicast, one file), reported beside it.
#     The disk rates change within minutes on a shared machine, so besides the 3-round figures
#     at the start, each scenario measures them just before and just after itself (one round
#     each) and its limits use the mean of those two.
#  2. For N in BENCH_PEERS (default "4 8"): N peers (`peer 1.0 <id> ... --dir`), backup of a
#     BENCH_MB (256) MB random file at degree BENCH_DEGREE (2) from peer 1, restore, compare.
#     Per phase: MB/s, ratio to the limit, peak RSS (VmHWM, reset at the phase start) and CPU
#     seconds of every process (peers, testapp), CPU by thread, PUTCHUNK/GETCHUNK resends and
#     backlog drops (STATE counters), UDP RcvbufErrors (/proc/net/snmp of the namespace).
#     With the first N: the median of BENCH_SMALL_RUNS (21) one-chunk backups at degree 1.
#     BENCH_SECURE=1: each N also runs in a secure group (every peer with `--group-key` and its
#     own `--data-key`, 32 random bytes each, mode 0600, in the temp dir): messages sealed with
#     HMAC-SHA256, chunks encrypted with XChaCha20-Poly1305 (63,960 bytes of the file per
#     chunk), right after the plain run of the same N; the report sets secure MB/s and peer CPU
#     beside plain and their ratio (target: secure >= 0.8 of plain).
#  3. BENCH_BIG=1: the same with a BENCH_BIG_MB (1000) MB file and 4 peers (peak RSS vs 256 MB).
#  BENCH_LAN=1: only the emulated Ethernet LAN (1 Gbit/s links, MTU 1,500, frame loss), see
#     scripts/bench-lan.sh (BENCH_MB, BENCH_LAN_MTU, BENCH_LAN_LOSS, BENCH_LAN_VERSIONS).
#  4. BENCH_SCALE=1: 16 peers, 20 files of 5-10 MB backed up at once at degree 2 from peers
#     1..16 round robin; every backup must succeed and every chunk be stored by >= 2 other
#     peers (per their STATE); each peer's peak RSS and backlog drops.
# Prints human tables, then one JSON line (the last line of stdout). Progress goes to stderr.
#
# Usage: scripts/bench.sh                    BENCH_BIG=1 BENCH_SCALE=1 scripts/bench.sh
#        BENCH_SECURE=1 BENCH_PEERS=4 BENCH_MB=64 scripts/bench.sh
#   BENCH_MB, BENCH_PEERS ("4 8"), BENCH_SECURE (0), BENCH_DEGREE, BENCH_SMALL_RUNS, BENCH_BIG_MB,
#   BENCH_SCALE_PEERS (16), BENCH_SCALE_FILES (20), BENCH_MC_COUNT (2000, datagrams per
#   multicast trial at least), BENCH_DISK_COUNT (4000 files per disk round),
#   BENCH_OP_TIMEOUT (s, one testapp call; default 300 + 3 s per MB), BENCH_PEER_OPTS (extra
#   peer options), BENCH_KEEP_LOGS=<dir> (copy the peer logs there), BENCH_PERF=<dir> (record
#   `perf record -g` of the peers during each backup and restore into <dir>/<scenario>-<phase>.data),
#   BENCH_REV (label of the code), TMPDIR (where the peer trees go: the disk measured).
# Exit status: 0 every phase succeeded, 1 a phase failed (still reported), 2 bad settings,
# 3 no private network namespace. Every step has a time limit; on every exit path the peers
# get SIGTERM (SIGKILL after 10 s) and the temporary directory is removed.
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
# BENCH_LAN=1: the emulated Ethernet LAN instead (scripts/bench-lan.sh says what it measures).
if [ "${BENCH_LAN:-0}" = 1 ]; then
    exec "$(dirname "$self")/bench-lan.sh" "$@"
fi
root="$(dirname "$(dirname "$self")")"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

MB="${BENCH_MB:-256}"
PEER_COUNTS="${BENCH_PEERS:-4 8}"
DEGREE="${BENCH_DEGREE:-2}"
SMALL_RUNS="${BENCH_SMALL_RUNS:-21}"
SMALL_BYTES=10000
BIG="${BENCH_BIG:-0}"
BIG_MB="${BENCH_BIG_MB:-1000}"
SCALE="${BENCH_SCALE:-0}"
SECURE="${BENCH_SECURE:-0}"
SCALE_PEERS="${BENCH_SCALE_PEERS:-16}"
SCALE_FILES="${BENCH_SCALE_FILES:-20}"
SCALE_DEGREE=2
MC_COUNT="${BENCH_MC_COUNT:-2000}"
DISK_COUNT="${BENCH_DISK_COUNT:-4000}"
for v in MB DEGREE SMALL_RUNS BIG BIG_MB SCALE SECURE SCALE_PEERS SCALE_FILES MC_COUNT DISK_COUNT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number (got '${!v}')" >&2; exit 2; }
done
for n in $PEER_COUNTS; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] || { echo "bench: BENCH_PEERS: peer counts must be >= 2" >&2; exit 2; }
done
[ "$DEGREE" -ge 1 ] && [ "$DEGREE" -le 9 ] || { echo "bench: BENCH_DEGREE must be 1-9" >&2; exit 2; }
[ "$MB" -ge 1 ] && [ "$BIG_MB" -ge 1 ] || { echo "bench: file sizes must be at least 1 MB" >&2; exit 2; }
[ "$SECURE" -le 1 ] || { echo "bench: BENCH_SECURE must be 0 or 1" >&2; exit 2; }
[ "$SCALE_PEERS" -ge 3 ] || { echo "bench: BENCH_SCALE_PEERS must be at least 3" >&2; exit 2; }
max_mb="$MB"
[ "$BIG" -eq 0 ] || [ "$BIG_MB" -le "$max_mb" ] || max_mb="$BIG_MB"
OP_TIMEOUT="${BENCH_OP_TIMEOUT:-$((300 + 3 * max_mb))}"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# 1. Build (outside the namespace: cargo may need the network to fetch crates), then re-run
#    this script in a private network namespace whose only interface is lo.
if [ -z "${DBS_BENCH_NETNS:-}" ]; then
    log "building release binaries"
    (cd "$root" && cargo build --release --workspace) >&2
    if only_loopback; then
        export DBS_BENCH_NETNS=inherited
    else
        reexec_in_private_netns DBS_BENCH_NETNS "$self" "$@" || true
        echo "bench: refusing to run: cannot create a private network namespace, and this one has" \
            "interfaces other than lo, so multicast could leave the machine." >&2
        printf '  %s\n' "${netns_refusals[@]}" >&2
        echo "  (needs root, or user namespaces: sysctl kernel.unprivileged_userns_clone=1)" >&2
        exit 3
    fi
fi
if [ "$DBS_BENCH_NETNS" != inherited ]; then
    ip link set lo up || { echo "bench: cannot bring lo up in the namespace" >&2; exit 3; }
fi
only_loopback || { echo "bench: refusing to run: this namespace has interfaces other than lo" >&2; exit 3; }
ip link show lo | grep -q 'UP' || { echo "bench: lo is down" >&2; exit 3; }

bin="${CARGO_TARGET_DIR:-$root/target}/release"
peer_bin="$bin/peer"
testapp_bin="$bin/testapp"
bench_bin="$bin/dbs-bench"
for b in "$peer_bin" "$testapp_bin" "$bench_bin"; do
    [ -x "$b" ] || { echo "bench: $b missing (build failed?)" >&2; exit 1; }
done
CLK_TCK="$(getconf CLK_TCK)"
rev="${BENCH_REV:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
if [ -z "${BENCH_REV:-}" ] && [ -n "$(git -C "$root" status --porcelain -- src peer testapp 2>/dev/null)" ]; then
    rev="$rev+dirty"
fi
timecmd=(/usr/bin/time -f '%M %U %S' -o)
[ -x /usr/bin/time ] || timecmd=()

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dbs-bench.XXXXXX")"
export DBS_RUNTIME_DIR="$tmp/run"
pids=()

# Stops the peers still running (SIGTERM, then SIGKILL after 10 s) and removes the temp dir.
cleanup() {
    local status=$? log
    trap - EXIT INT TERM
    [ -z "${perf_pid:-}" ] || kill -INT "$perf_pid" 2>/dev/null || true
    stop_pids "${pids[@]}"
    if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
        mkdir -p "$BENCH_KEEP_LOGS" &&
            find "$tmp" -name 'peer*.log' -exec cp --parents -t "$BENCH_KEEP_LOGS" {} + 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        while IFS= read -r log; do
            echo "--- last lines of ${log#"$tmp"/} ---" >&2
            tail -n 15 "$log" >&2
        done < <(find "$tmp" -name 'peer*.log' 2>/dev/null | sort | tail -n 4)
        echo "bench: exit status $status" >&2
    fi
    rm -rf -- "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "bench: $*" >&2
    exit 1
}
now() { date +%s.%N; }
# fsub A B: A - B (3 decimals); fdiv A B: A / B (2 decimals, null if B is 0 or null);
# rate BYTES SECS: MB/s; fmin A B: the smaller.
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "null" && b != "null" && b > 0) printf "%.2f", a / b; else printf "null" }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / 1e6 / s; else printf "null" }'; }
fmin() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a + 0 < b + 0) ? a : b }'; }
fmax() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a + 0 > b + 0) ? a : b }'; }
# jnum FILE KEY: a top-level number of a one-line JSON document (null if absent).
jnum() {
    local v
    v="$(grep -o "\"$2\":[-0-9.e+]*" "$1" 2>/dev/null | head -n 1 | cut -d: -f2)" || true
    echo "${v:-null}"
}
# udp_counter NAME: one field of the Udp: line of /proc/net/snmp (this namespace only).
udp_counter() {
    awk -v want="$1" '$1 == "Udp:" { if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 }
        else { print $col[want]; exit } }' /proc/net/snmp
}
# port_drops PORT: datagrams dropped so far by the sockets bound to PORT (the "drops" column of
# /proc/net/udp), i.e. by one channel's sockets of all peers.
port_drops() {
    awk -v p="$(printf '%04X' "$1")" 'NR > 1 { split($2, a, ":"); if (a[2] == p) s += $NF } END { print s + 0 }' /proc/net/udp
}
# The peers' channel ports, as in start_peers.
declare -A CHANNEL_PORT=([MC]=8101 [MDB]=8102 [MDR]=8103)
# cpu_ticks PID: user + system clock ticks of a process (all its threads).
cpu_ticks() {
    local s f
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    s="${s##*) }"
    read -r -a f <<<"$s"
    echo $((f[11] + f[12]))
}
ticks_s() { awk -v t="$1" -v k="$CLK_TCK" 'BEGIN { printf "%.2f", t / k }'; }
vmhwm_kb() { awk '$1 == "VmHWM:" { print $2; found = 1 } END { if (!found) print "null" }' "/proc/$1/status" 2>/dev/null || echo null; }
# reset_hwm PID: restart the peak-RSS count of a process (needs root or the same user).
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || hwm_reset_ok=0; }
hwm_reset_ok=1
# snap_threads PID: "tid name ticks" for each thread of a process.
snap_threads() {
    local t s f name
    for t in /proc/"$1"/task/*; do
        name="$(cat "$t/comm" 2>/dev/null)" || continue
        s="$(cat "$t/stat" 2>/dev/null)" || continue
        s="${s##*) }"
        read -r -a f <<<"$s"
        echo "${t##*/} ${name// /_} $((f[11] + f[12]))"
    done
}
# threads_diff BEFORE AFTER: CPU seconds per thread name between two snapshots, largest first.
threads_diff() {
    awk -v k="$CLK_TCK" 'NR == FNR { a[$1] = $3; next }
        { c[$2] += $3 - ($1 in a ? a[$1] : 0); n[$2]++ }
        END { for (x in c) printf "%.2f %s\n", c[x] / k, (n[x] > 1 ? x "(x" n[x] ")" : x) }' "$1" "$2" |
        sort -rn | head -n 6 | awk '$1 > 0 { printf "%s%s %s", (out++ ? ", " : ""), $2, $1 } END { if (!out) printf "-" }'
}
# state_counter FILE NAME: a counter from a saved `testapp --json STATE` (null if absent).
state_counter() {
    local v
    v="$(grep -o "\"$2\":[0-9]*" "$1" 2>/dev/null | head -n 1 | cut -d: -f2)" || true
    echo "${v:-null}"
}
# timed OUT ARGS...: runs testapp with a time limit (and /usr/bin/time for its peak RSS and CPU);
# sets $rc, $elapsed, $app_rss, $app_cpu.
timed() {
    local out="$1" t0 t1
    shift
    t0="$(now)"
    set +e
    if [ "${#timecmd[@]}" -gt 0 ]; then
        "${timecmd[@]}" "$out.time" timeout --kill-after=5 "$OP_TIMEOUT" "$testapp_bin" "$@" >"$out" 2>"$out.err"
    else
        timeout --kill-after=5 "$OP_TIMEOUT" "$testapp_bin" "$@" >"$out" 2>"$out.err"
    fi
    rc=$?
    set -e
    t1="$(now)"
    elapsed="$(fsub "$t1" "$t0")"
    app_rss=null app_cpu=null
    if [ -s "$out.time" ]; then
        read -r app_rss u s < <(tail -n 1 "$out.time") || true
        [[ "${app_rss:-}" =~ ^[0-9]+$ ]] || app_rss=null
        app_cpu="$(awk -v u="${u:-0}" -v s="${s:-0}" 'BEGIN { printf "%.2f", u + s }')"
    fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "(timed out after $OP_TIMEOUT s)" >>"$out"; fi
}

# ---- peers ------------------------------------------------------------------------------------
# key_file PATH: 32 random bytes, readable by their owner only (what a peer's key file needs).
key_file() {
    [ -f "$1" ] || (umask 077 && head -c 32 /dev/urandom >"$1")
    chmod 600 "$1"
}
# start_peers TAG N [SECURE]: starts peers 1..N (trees and logs in $tmp/TAG, access points
# TAG-pID) and waits until each answers STATE. SECURE=1: in a secure group (one group key,
# a data key per peer, all in $tmp/keys).
start_peers() {
    local tag="$1" n="$2" secure="${3:-0}" id deadline
    local -a opts keys
    read -r -a opts <<<"${BENCH_PEER_OPTS:-}"
    mkdir -p "$tmp/$tag"
    [ "$secure" -eq 0 ] || { mkdir -p "$tmp/keys" && key_file "$tmp/keys/group.key"; }
    pids=()
    for ((id = 1; id <= n; id++)); do
        keys=()
        if [ "$secure" -eq 1 ]; then
            key_file "$tmp/keys/data$id.key"
            keys=(--group-key "$tmp/keys/group.key" --data-key "$tmp/keys/data$id.key")
        fi
        "$peer_bin" 1.0 "$id" "$tag-p$id" 239.77.0.1 "${CHANNEL_PORT[MC]}" 239.77.0.2 "${CHANNEL_PORT[MDB]}" 239.77.0.3 "${CHANNEL_PORT[MDR]}" \
            --dir "$tmp/$tag/peer$id" "${keys[@]}" "${opts[@]}" >"$tmp/$tag/peer$id.log" 2>&1 &
        pids+=("$!")
    done
    deadline=$((SECONDS + 60))
    for ((id = 1; id <= n; id++)); do
        until "$testapp_bin" "$tag-p$id" STATE >/dev/null 2>&1; do
            kill -0 "${pids[id - 1]}" 2>/dev/null || die "$tag: peer $id exited at start (see its log)"
            [ "$SECONDS" -lt "$deadline" ] || die "$tag: peer $id did not answer on its access point in 60 s"
            sleep 0.1
        done
    done
    log "$tag: $n peers answer STATE"
}
# stop_peers: SIGTERM, wait up to 10 s each; sets $stopped_ok (1 if all exited 0 in time).
stop_peers() {
    local i
    stopped_ok=1
    stop_pids "${pids[@]}"
    for i in "${!pids[@]}"; do
        [ "${stop_statuses[i]}" -eq 0 ] || { stopped_ok=0; log "peer pid ${pids[i]} exited with status ${stop_statuses[i]} after SIGTERM (137: killed after 10 s)"; }
    done
    pids=()
}
# states TAG N SUFFIX: saves every peer's STATE as $tmp/TAG/stateID.SUFFIX.json.
states() {
    local id
    for ((id = 1; id <= $2; id++)); do
        timeout 60 "$testapp_bin" --json "$1-p$id" STATE >"$tmp/$1/state$id.$3.json" 2>/dev/null || true
    done
}
# Per-phase figures, in associative arrays keyed "TAG,PHASE,ID" (peer ID or "app").
declare -A P_HWM P_CPU P_THR P_PUT P_GET P_DROP P_SLOW P_LATE
declare -A PH_RCV PH_RCVIN PH_OUT PH_IN PH_CH
# phase_begin TAG N PHASE: counters, CPU and thread snapshots; resets every peer's VmHWM.
phase_begin() {
    local tag="$1" n="$2" phase="$3" id c
    states "$tag" "$n" "$phase.0"
    for ((id = 1; id <= n; id++)); do
        P_CPU[$tag,$phase,$id]="$(cpu_ticks "${pids[id - 1]}")"
        snap_threads "${pids[id - 1]}" >"$tmp/$tag/threads$id.$phase.0"
        reset_hwm "${pids[id - 1]}"
    done
    PH_RCV[$tag,$phase]="$(udp_counter RcvbufErrors)"
    PH_RCVIN[$tag,$phase]="$(udp_counter InErrors)"
    for c in MC MDB MDR; do PH_CH[$tag,$phase,$c]="$(port_drops "${CHANNEL_PORT[$c]}")"; done
    PH_OUT[$tag,$phase]="$(udp_counter OutDatagrams)"
    PH_IN[$tag,$phase]="$(udp_counter InDatagrams)"
    perf_pid=""
    if [ -n "${BENCH_PERF:-}" ] && [ "$phase" != small ] && command -v perf >/dev/null; then
        mkdir -p "$BENCH_PERF"
        perf record -q -g -p "$(IFS=,; echo "${pids[*]}")" -o "$BENCH_PERF/$tag-$phase.data" 2>/dev/null &
        perf_pid=$!
        sleep 0.5 # let perf attach before the phase starts
    fi
}
# phase_end TAG N PHASE: the phase's peak RSS, CPU, CPU by thread, counters and drops.
phase_end() {
    local tag="$1" n="$2" phase="$3" id c c0 c1 f0 f1
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf_pid=""
    fi
    PH_RCV[$tag,$phase]=$(($(udp_counter RcvbufErrors) - ${PH_RCV[$tag,$phase]}))
    PH_RCVIN[$tag,$phase]=$(($(udp_counter InErrors) - ${PH_RCVIN[$tag,$phase]}))
    for c in MC MDB MDR; do PH_CH[$tag,$phase,$c]=$(($(port_drops "${CHANNEL_PORT[$c]}") - ${PH_CH[$tag,$phase,$c]})); done
    PH_OUT[$tag,$phase]=$(($(udp_counter OutDatagrams) - ${PH_OUT[$tag,$phase]}))
    PH_IN[$tag,$phase]=$(($(udp_counter InDatagrams) - ${PH_IN[$tag,$phase]}))
    for ((id = 1; id <= n; id++)); do
        P_HWM[$tag,$phase,$id]="$(vmhwm_kb "${pids[id - 1]}")"
        P_CPU[$tag,$phase,$id]="$(ticks_s $(($(cpu_ticks "${pids[id - 1]}") - ${P_CPU[$tag,$phase,$id]})))"
        snap_threads "${pids[id - 1]}" >"$tmp/$tag/threads$id.$phase.1"
        P_THR[$tag,$phase,$id]="$(threads_diff "$tmp/$tag/threads$id.$phase.0" "$tmp/$tag/threads$id.$phase.1")"
    done
    states "$tag" "$n" "$phase.1"
    for ((id = 1; id <= n; id++)); do
        f0="$tmp/$tag/state$id.$phase.0.json" f1="$tmp/$tag/state$id.$phase.1.json"
        for c in putchunk_resends:P_PUT getchunk_resends:P_GET backlog_dropped:P_DROP restore_slowdowns:P_SLOW putchunk_late:P_LATE; do
            c0="$(state_counter "$f0" "${c%%:*}")" c1="$(state_counter "$f1" "${c%%:*}")"
            local -n arr="${c##*:}"
            # shellcheck disable=SC2034  # arr names one of P_PUT, P_GET, P_DROP, P_SLOW, P_LATE
            if [ "$c0" = null ] || [ "$c1" = null ]; then arr[$tag,$phase,$id]=null; else arr[$tag,$phase,$id]=$((c1 - c0)); fi
            unset -n arr
        done
    done
}
# sum_over TAG N PHASE ARRAY: sum of a per-peer figure (null if any is null).
sum_over() {
    local -n a="$4"
    local id s=0
    for ((id = 1; id <= $2; id++)); do
        [ "${a[$1,$3,$id]}" = null ] && { echo null; return; }
        s=$((s + ${a[$1,$3,$id]}))
    done
    echo "$s"
}
# max_hwm TAG N PHASES...: the largest peer VmHWM over the phases.
max_hwm() {
    local tag="$1" n="$2" id p m=0
    shift 2
    for p in "$@"; do
        for ((id = 1; id <= n; id++)); do
            local v="${P_HWM[$tag,$p,$id]:-null}"
            [ "$v" != null ] && [ "$v" -gt "$m" ] && m="$v"
        done
    done
    echo "$m"
}

failed=0
json_parts=()
report=()
# out LINE...: a line of the human report (printed at the end, before the JSON line).
out() { report+=("$*"); }

# ---- machine --------------------------------------------------------------------------------
fs_desc="$(df -PT "$tmp" | awk 'NR == 2 { print $1 " (" $2 ", mounted on " $7 ")" }')"
# An ext4 filesystem with a journal has a jbd2 entry named after its device (e.g. vda-8).
ext4_journal=""
dev="$(df -P "$tmp" | awk 'NR == 2 { print $1 }')"
if [ "$(df -PT "$tmp" | awk 'NR == 2 { print $2 }')" = ext4 ] && [ -d /proc/fs/jbd2 ] && [ -d "/proc/fs/ext4/${dev##*/}" ]; then
    if compgen -G "/proc/fs/jbd2/${dev##*/}-*" >/dev/null; then ext4_journal="with a journal"; else ext4_journal="no journal"; fi
fi
mem_total="$(free -h | awk '$1 == "Mem:" { print $2 }')"
mem_avail="$(free -h | awk '$1 == "Mem:" { print $7 }')"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
date_utc="$(date -u +%Y-%m-%dT%H:%MZ)"
log "network: $DBS_BENCH_NETNS (only lo); temp dir $tmp on $fs_desc ${ext4_journal:+($ext4_journal)}; load $load_start"

# ---- 1. raw limits ------------------------------------------------------------------------
# Chunk trees written at once: 1, and the copies of each scenario (N-1 storing peers).
disk_trees=(1)
for n in $PEER_COUNTS; do disk_trees+=($((n - 1))); done
[ "$BIG" -eq 0 ] || disk_trees+=(3)
[ "$SCALE" -eq 0 ] || disk_trees+=($((SCALE_PEERS - 1)))
mapfile -t disk_trees < <(printf '%s\n' "${disk_trees[@]}" | sort -un)
log "disk limit: 3 rounds of $DISK_COUNT chunk files in ${disk_trees[*]} trees at once, and one file"
trees_args=()
for t in "${disk_trees[@]}"; do trees_args+=(--trees "$t"); done
timeout 900 "$bench_bin" disk --dir "$tmp/disk" --count "$DISK_COUNT" --rounds 3 "${trees_args[@]}" \
    >"$tmp/disk.json" || die "dbs-bench disk failed"
declare -A DISK
for t in "${disk_trees[@]}"; do DISK[$t]="$(jnum "$tmp/disk.json" "chunk_mbps_trees_$t")"; done
disk_file_mbps="$(jnum "$tmp/disk.json" one_file_mbps)"
declare -A MC
mapfile -t mc_receivers < <(printf '%s\n' "${disk_trees[@]}" | awk '$1 > 1')
for r in "${mc_receivers[@]}"; do
    log "multicast limit: $r receiving processes"
    timeout 600 "$bench_bin" multicast --receivers "$r" --group 239.77.1.1:8201 --count "$MC_COUNT" \
        >"$tmp/mc$r.json" || die "dbs-bench multicast --receivers $r failed"
    MC[$r]="$(jnum "$tmp/mc$r.json" loss_free_mbps)"
done
out ""
out "dbs benchmark $date_utc, code $rev; $(nproc) CPUs, $mem_total RAM ($mem_avail available), kernel $(uname -r)"
out "peer trees on $fs_desc${ext4_journal:+, $ext4_journal}; network namespace: $DBS_BENCH_NETNS; 1 MB = 10^6 bytes"
out ""
out "Raw limits (median of 3 rounds; 64,000-byte chunk files / datagrams):"
for t in "${disk_trees[@]}"; do
    out "  disk: chunk files made durable (stage + group commit), $t tree(s) written at once: ${DISK[$t]} MB/s in all"
done
out "  disk: one file written in 64,000-byte pieces then fsynced (as a restore writes): $disk_file_mbps MB/s"
out "  receive buffer of each channel socket (kernel figure; the peers ask for $(jnum "$tmp/mc${mc_receivers[0]}.json" recv_buffer_requested) bytes):" \
    "$(jnum "$tmp/mc${mc_receivers[0]}.json" recv_buffer_effective) bytes"
mc_json=""
for r in "${mc_receivers[@]}"; do
    out "  multicast to $r receiving processes, highest loss-free paced rate: ${MC[$r]} MB/s" \
        "(bound: $(grep -o '"bound":"[a-z]*"' "$tmp/mc$r.json" | cut -d'"' -f4); lowest target with a lossy trial: $(jnum "$tmp/mc$r.json" lowest_lossy_target_mbps);" \
        "unpaced: $(jnum "$tmp/mc$r.json" unpaced_mbps) MB/s, $(jnum "$tmp/mc$r.json" unpaced_rcvbuf_errors) of $(jnum "$tmp/mc$r.json" unpaced_sent) dropped)"
    mc_json+="${mc_json:+,}\"$r\":$(cat "$tmp/mc$r.json")"
done
json_parts+=("\"limits\":{\"disk\":$(cat "$tmp/disk.json"),\"multicast\":{$mc_json}}")

# ---- 2. backup / restore scenarios ----------------------------------------------------------
mkdir -p "$tmp/files"
# make_file MB: a random file of that many MB (shared between scenarios); prints its path.
make_file() {
    local path="$tmp/files/random-$1MB.bin"
    [ -f "$path" ] || { log "generating $1 MB of random data"; head -c "$(($1 * 1000000))" /dev/urandom >"$path"; }
    echo "$path"
}
# small_latency TAG: SMALL_RUNS one-chunk backups at degree 1 from peer 1 (sets small_* vars).
small_latency() {
    local tag="$1" i times=()
    small_fail=0
    log "$tag: $SMALL_RUNS one-chunk backups ($SMALL_BYTES bytes, degree 1)"
    local r0
    r0="$(udp_counter RcvbufErrors)"
    for ((i = 1; i <= SMALL_RUNS; i++)); do
        head -c "$SMALL_BYTES" /dev/urandom >"$tmp/files/small$i.bin"
        timed "$tmp/$tag/small$i.out" --json "$tag-p1" BACKUP "$tmp/files/small$i.bin" 1
        if [ "$rc" -eq 0 ]; then times+=("$elapsed"); else small_fail=$((small_fail + 1)); fi
    done
    small_rcv=$(($(udp_counter RcvbufErrors) - r0))
    if [ "${#times[@]}" -gt 0 ]; then
        read -r small_median small_min small_p90 small_max < <(printf '%s\n' "${times[@]}" | sort -g |
            awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                p = v[int(0.9 * NR + 0.999)]; printf "%.3f %.3f %.3f %.3f\n", m, v[1], p, v[NR] }')
    else
        small_median=null small_min=null small_p90=null small_max=null
    fi
    [ "$small_fail" -eq 0 ] || { failed=1; log "$small_fail one-chunk backups failed: $(head -c 300 "$tmp/$tag/small1.out")"; }
}

# disk_bracket TAG WHEN COPIES: one round of the disk measurement (1 tree, COPIES trees, one
# file) just before or after a scenario (WHEN = before/after): the disk of this shared machine
# changes speed within minutes, so each scenario's limit uses the rates measured around it.
declare -A DB
disk_bracket() {
    local tag="$1" when="$2" copies="$3" result="$tmp/$1/disk-$2.json"
    mkdir -p "$tmp/$tag"
    timeout 600 "$bench_bin" disk --dir "$tmp/$tag/disk-$when" --count "$DISK_COUNT" --rounds 1 \
        --trees 1 --trees "$copies" >"$result" 2>/dev/null || die "$tag: dbs-bench disk failed"
    DB[$tag,$when,c]="$(jnum "$result" "chunk_mbps_trees_$copies")"
    DB[$tag,$when,1]="$(jnum "$result" chunk_mbps_trees_1)"
    DB[$tag,$when,f]="$(jnum "$result" one_file_mbps)"
}
fmean() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a + b) / 2 }'; }

# scenario TAG N FILE_MB WITH_SMALL [SECURE]: backup + restore of a FILE_MB file at DEGREE with
# N peers (SECURE=1: in a secure group, whose chunks carry 63,960 bytes of the file each).
declare -A S_MBPS S_LIMIT S_RATIO S_OK S_S S_APP_HWM S_APP_CPU S_PEER_CPU S_SMALL
scenario() {
    local tag="$1" n="$2" mb="$3" with_small="$4" secure="${5:-0}" file bytes chunks copies mc disk_b lim_b lim_r id p
    file="$(make_file "$mb")"
    bytes="$(stat -c %s "$file")"
    if [ "$secure" -eq 1 ]; then chunks=$((bytes / 63960 + 1)); else chunks=$((bytes / 64000 + 1)); fi
    copies=$((n - 1))
    mc="${MC[$copies]}"
    log "$tag: disk rates just before"
    disk_bracket "$tag" before "$copies"
    start_peers "$tag" "$n" "$secure"
    sync
    local load0
    load0="$(cut -d' ' -f1-3 /proc/loadavg)"
    # Backup.
    log "$tag: BACKUP $mb MB ($chunks chunks) at degree $DEGREE from peer 1"
    phase_begin "$tag" "$n" backup
    timed "$tmp/$tag/backup.out" --json "$tag-p1" BACKUP "$file" "$DEGREE"
    phase_end "$tag" "$n" backup
    S_S[$tag,backup]="$elapsed" S_APP_HWM[$tag,backup]="$app_rss" S_APP_CPU[$tag,backup]="$app_cpu"
    if [ "$rc" -eq 0 ]; then
        S_OK[$tag,backup]=ok
        S_MBPS[$tag,backup]="$(rate "$bytes" "$elapsed")"
    else
        S_OK[$tag,backup]="FAILED (testapp exit $rc)"
        S_MBPS[$tag,backup]=null
        failed=1
        log "$tag: backup failed: $(head -c 600 "$tmp/$tag/backup.out")"
    fi
    # Restore (attempted even if the backup fell short).
    log "$tag: RESTORE"
    phase_begin "$tag" "$n" restore
    timed "$tmp/$tag/restore.out" --json "$tag-p1" RESTORE "$file"
    phase_end "$tag" "$n" restore
    S_S[$tag,restore]="$elapsed" S_APP_HWM[$tag,restore]="$app_rss" S_APP_CPU[$tag,restore]="$app_cpu"
    S_MBPS[$tag,restore]=null
    if [ "$rc" -eq 0 ]; then
        local restored
        restored="$(sed -n 's/.*"restored_to":"\([^"]*\)".*/\1/p' "$tmp/$tag/restore.out")"
        [ -n "$restored" ] || restored="$tmp/$tag/peer1/restored/$(basename "$file")"
        if [ ! -f "$restored" ]; then
            S_OK[$tag,restore]="FAILED (no file at $restored)"
        elif cmp -s "$file" "$restored"; then
            S_OK[$tag,restore]=ok
            S_MBPS[$tag,restore]="$(rate "$bytes" "$elapsed")"
        else
            S_OK[$tag,restore]="FAILED (restored file differs)"
        fi
        rm -f -- "$restored"
    else
        S_OK[$tag,restore]="FAILED (testapp exit $rc)"
    fi
    [ "${S_OK[$tag,restore]}" = ok ] || { failed=1; log "$tag: restore: ${S_OK[$tag,restore]}: $(head -c 600 "$tmp/$tag/restore.out")"; }
    local phases=(backup restore)
    if [ "$with_small" -eq 1 ]; then
        phase_begin "$tag" "$n" small
        small_latency "$tag"
        phase_end "$tag" "$n" small
        phases+=(small)
        S_SMALL[$tag]="$small_median"
        [ "$secure" -eq 1 ] || { small_tag="$tag" plain_small_median="$small_median"; }
    fi
    for p in backup restore; do
        S_PEER_CPU[$tag,$p]="$(for ((id = 1; id <= n; id++)); do echo "${P_CPU[$tag,$p,$id]}"; done | awk '{ s += $1 } END { printf "%.2f", s }')"
    done
    local load1
    load1="$(cut -d' ' -f1-3 /proc/loadavg)"
    for ((id = 1; id <= n; id++)); do kill -0 "${pids[id - 1]}" 2>/dev/null || { failed=1; log "$tag: peer $id is no longer running"; }; done
    stop_peers
    log "$tag: disk rates just after"
    disk_bracket "$tag" after "$copies"
    # Limits from the mean of the rates measured just before and just after.
    local disk_1 disk_f
    disk_b="$(fmean "${DB[$tag,before,c]}" "${DB[$tag,after,c]}")"
    disk_1="$(fmean "${DB[$tag,before,1]}" "${DB[$tag,after,1]}")"
    disk_f="$(fmean "${DB[$tag,before,f]}" "${DB[$tag,after,f]}")"
    lim_b="$(fmin "$mc" "$(fdiv "$disk_b" "$copies")")"
    lim_r="$(fmin "$mc" "$(fmax "$disk_b" "$disk_1")")"
    lim_rf="$(fmin "$mc" "$disk_f")"
    S_LIMIT[$tag,backup]="$lim_b" S_LIMIT[$tag,restore]="$lim_r"
    S_RATIO[$tag,backup]="$(fdiv "${S_MBPS[$tag,backup]}" "$lim_b")"
    S_RATIO[$tag,restore]="$(fdiv "${S_MBPS[$tag,restore]}" "$lim_r")"
    # The simpler model: the disk rate of one tree for both (what one peer's commits reach).
    local lim1_b lim1_r
    lim1_b="$(fmin "$mc" "$(fdiv "$disk_1" "$copies")")"
    lim1_r="$(fmin "$mc" "$disk_1")"
    local warn_lines
    warn_lines="$(cat "$tmp/$tag"/peer*.log | grep -cE ' (WARN|ERROR) ' || true)"
    [ "$stopped_ok" -eq 1 ] || failed=1

    # Human report.
    out ""
    out "== $tag: $n peers (protocol 1.0$([ "$secure" -eq 0 ] || echo ", secure group: --group-key, --data-key per peer")${BENCH_PEER_OPTS:+, options: $BENCH_PEER_OPTS}), file $mb MB ($chunks chunks), degree $DEGREE"
    out "   copies written per chunk: $copies (protocol 1.0: every peer but the initiator stores every chunk, whatever the degree)"
    out "   disk just before / after (MB/s): $copies trees at once ${DB[$tag,before,c]} / ${DB[$tag,after,c]}," \
        "1 tree ${DB[$tag,before,1]} / ${DB[$tag,after,1]}, one file ${DB[$tag,before,f]} / ${DB[$tag,after,f]}; limits use the means"
    out "   limits: backup min(multicast $mc, disk $disk_b ($copies trees at once) / $copies copies) = $lim_b MB/s;" \
        "restore min(multicast $mc, disk $(fmax "$disk_b" "$disk_1") (best chunk-file rate)) = $lim_r MB/s"
    out "   (restore against one file written in place, as a restore writes: limit min(multicast $mc, $disk_f) = $lim_rf MB/s," \
        "ratio $(fdiv "${S_MBPS[$tag,restore]}" "$lim_rf"))"
    out "   (with the disk rate of 1 tree, $disk_1 MB/s, for both: backup limit $lim1_b, ratio $(fdiv "${S_MBPS[$tag,backup]}" "$lim1_b");" \
        "restore limit $lim1_r, ratio $(fdiv "${S_MBPS[$tag,restore]}" "$lim1_r"))"
    out "   CPU s of all peers: backup ${S_PEER_CPU[$tag,backup]}, restore ${S_PEER_CPU[$tag,restore]}"
    out "   load average before/after: $load0 / $load1; WARN/ERROR log lines: $warn_lines; clean SIGTERM stop: $([ "$stopped_ok" -eq 1 ] && echo yes || echo NO)"
    out "$(printf '   %-8s %9s %8s %9s %6s %8s %8s %8s %8s %8s %8s %8s  %s' phase "wall s" "MB/s" "limit" ratio "put res" "get res" late slowdn dropped rcvbuf InErrors status)"
    for p in backup restore; do
        out "$(printf '   %-8s %9s %8s %9s %6s %8s %8s %8s %8s %8s %8s %8s  %s' "$p" "${S_S[$tag,$p]}" "${S_MBPS[$tag,$p]}" "${S_LIMIT[$tag,$p]}" \
            "${S_RATIO[$tag,$p]}" "$(sum_over "$tag" "$n" "$p" P_PUT)" "$(sum_over "$tag" "$n" "$p" P_GET)" "$(sum_over "$tag" "$n" "$p" P_LATE)" "$(sum_over "$tag" "$n" "$p" P_SLOW)" \
            "$(sum_over "$tag" "$n" "$p" P_DROP)" "${PH_RCV[$tag,$p]}" "${PH_RCVIN[$tag,$p]}" "${S_OK[$tag,$p]}")"
    done
    if [ "$with_small" -eq 1 ]; then
        out "$(printf '   %-8s %9s %8s %9s %6s %8s %8s %8s %8s %8s %8s %8s  %s' 1-chunk "$small_median" - - - \
            "$(sum_over "$tag" "$n" small P_PUT)" - "$(sum_over "$tag" "$n" small P_LATE)" - "$(sum_over "$tag" "$n" small P_DROP)" "${PH_RCV[$tag,small]}" "${PH_RCVIN[$tag,small]}" \
            "median of $SMALL_RUNS at degree 1 (min $small_min, p90 $small_p90, max $small_max)$([ "$small_fail" -eq 0 ] || echo ", $small_fail FAILED")")"
    fi
    out "   socket drops by channel MC / MDB / MDR (/proc/net/udp): backup ${PH_CH[$tag,backup,MC]} / ${PH_CH[$tag,backup,MDB]} / ${PH_CH[$tag,backup,MDR]}," \
        "restore ${PH_CH[$tag,restore,MC]} / ${PH_CH[$tag,restore,MDB]} / ${PH_CH[$tag,restore,MDR]}"
    out "   UDP datagrams sent / delivered to sockets (/proc/net/snmp; $chunks chunks): backup ${PH_OUT[$tag,backup]} / ${PH_IN[$tag,backup]}," \
        "restore ${PH_OUT[$tag,restore]} / ${PH_IN[$tag,restore]}"
    out "   per process, each phase (peak RSS = VmHWM reset at the phase start; CPU = user + system):"
    out "$(printf '   %-8s %-8s %10s %7s  %s' process phase "peak KiB" "CPU s" "CPU s by thread (largest)")"
    for ((id = 1; id <= n; id++)); do
        for p in "${phases[@]}"; do
            out "$(printf '   %-8s %-8s %10s %7s  %s' "peer$id" "$p" "${P_HWM[$tag,$p,$id]}" "${P_CPU[$tag,$p,$id]}" "${P_THR[$tag,$p,$id]}")"
        done
    done
    for p in backup restore; do
        out "$(printf '   %-8s %-8s %10s %7s' testapp "$p" "${S_APP_HWM[$tag,$p]}" "${S_APP_CPU[$tag,$p]}")"
    done

    # JSON.
    local pj="" ph
    for ((id = 1; id <= n; id++)); do
        ph=""
        for p in "${phases[@]}"; do
            ph+="${ph:+,}\"$p\":{\"vmhwm_kb\":${P_HWM[$tag,$p,$id]},\"cpu_s\":${P_CPU[$tag,$p,$id]},\"putchunk_resends\":${P_PUT[$tag,$p,$id]},\"getchunk_resends\":${P_GET[$tag,$p,$id]},\"backlog_dropped\":${P_DROP[$tag,$p,$id]}}"
        done
        pj+="${pj:+,}{\"id\":$id,$ph}"
    done
    local phj=""
    for p in backup restore; do
        phj+="${phj:+,}\"$p\":{\"ok\":$([ "${S_OK[$tag,$p]}" = ok ] && echo true || echo false),\"wall_s\":${S_S[$tag,$p]},\"mbps\":${S_MBPS[$tag,$p]},\"limit_mbps\":${S_LIMIT[$tag,$p]},\"ratio\":${S_RATIO[$tag,$p]},\"limit_1_tree_mbps\":$([ "$p" = backup ] && echo "$lim1_b" || echo "$lim1_r"),\"ratio_1_tree\":$(fdiv "${S_MBPS[$tag,$p]}" "$([ "$p" = backup ] && echo "$lim1_b" || echo "$lim1_r")"),$([ "$p" = restore ] && echo "\"limit_one_file_mbps\":$lim_rf,\"ratio_one_file\":$(fdiv "${S_MBPS[$tag,$p]}" "$lim_rf"),")\"putchunk_resends\":$(sum_over "$tag" "$n" "$p" P_PUT),\"getchunk_resends\":$(sum_over "$tag" "$n" "$p" P_GET),\"restore_slowdowns\":$(sum_over "$tag" "$n" "$p" P_SLOW),\"putchunk_late\":$(sum_over "$tag" "$n" "$p" P_LATE),\"backlog_dropped\":$(sum_over "$tag" "$n" "$p" P_DROP),\"rcvbuf_errors\":${PH_RCV[$tag,$p]},\"socket_drops\":{\"MC\":${PH_CH[$tag,$p,MC]},\"MDB\":${PH_CH[$tag,$p,MDB]},\"MDR\":${PH_CH[$tag,$p,MDR]}},\"udp_in_errors\":${PH_RCVIN[$tag,$p]},\"udp_out_datagrams\":${PH_OUT[$tag,$p]},\"udp_in_datagrams\":${PH_IN[$tag,$p]},\"max_peer_vmhwm_kb\":$(max_hwm "$tag" "$n" "$p"),\"peers_cpu_s\":${S_PEER_CPU[$tag,$p]},\"testapp_vmhwm_kb\":${S_APP_HWM[$tag,$p]},\"testapp_cpu_s\":${S_APP_CPU[$tag,$p]}}"
    done
    local sj=""
    if [ "$with_small" -eq 1 ]; then
        sj=",\"small_backup\":{\"runs\":$SMALL_RUNS,\"bytes\":$SMALL_BYTES,\"degree\":1,\"median_s\":$small_median,\"min_s\":$small_min,\"p90_s\":$small_p90,\"max_s\":$small_max,\"failures\":$small_fail,\"rcvbuf_errors\":$small_rcv}"
    fi
    S_JSON[$tag]="{\"tag\":\"$tag\",\"secure\":$([ "$secure" -eq 1 ] && echo true || echo false),\"n_peers\":$n,\"file_mb\":$mb,\"chunks\":$chunks,\"degree\":$DEGREE,\"copies_written\":$copies,\"multicast_limit_mbps\":$mc,\"disk_mbps\":{\"chunk_files_${copies}_trees\":$disk_b,\"chunk_files_1_tree\":$disk_1,\"one_file\":$disk_f,\"before\":$(cat "$tmp/$tag/disk-before.json"),\"after\":$(cat "$tmp/$tag/disk-after.json")},$phj,\"peers\":[$pj]$sj,\"warn_error_lines\":$warn_lines,\"clean_stop\":$([ "$stopped_ok" -eq 1 ] && echo true || echo false),\"load_before\":\"$load0\",\"load_after\":\"$load1\"}"
}
declare -A S_JSON
small_tag=""
plain_small_median=null
first=1
scen_tags=()
for n in $PEER_COUNTS; do
    scenario "p$n-${MB}MB" "$n" "$MB" "$first"
    scen_tags+=("p$n-${MB}MB")
    if [ "$SECURE" -eq 1 ]; then
        scenario "p$n-${MB}MB-secure" "$n" "$MB" "$first" 1
        scen_tags+=("p$n-${MB}MB-secure")
    fi
    first=0
done
# Secure against plain, for each N: MB/s and the peers' CPU seconds, side by side.
secure_json=null
if [ "$SECURE" -eq 1 ]; then
    out ""
    out "Secure group against plain ($MB MB, degree $DEGREE; ratio = secure / plain; CPU = all peers' user + system s in the phase):"
    out "$(printf '  %-6s %-8s %10s %10s %6s %10s %10s %6s  %s' peers phase "plain MB/s" "secure" ratio "plain CPU" "secure" ratio status)"
    sv=""
    for n in $PEER_COUNTS; do
        pt="p$n-${MB}MB" st="p$n-${MB}MB-secure"
        ph=""
        for p in backup restore; do
            r="$(fdiv "${S_MBPS[$st,$p]}" "${S_MBPS[$pt,$p]}")" rc_="$(fdiv "${S_PEER_CPU[$st,$p]}" "${S_PEER_CPU[$pt,$p]}")"
            out "$(printf '  %-6s %-8s %10s %10s %6s %10s %10s %6s  %s' "$n" "$p" "${S_MBPS[$pt,$p]}" "${S_MBPS[$st,$p]}" "$r" \
                "${S_PEER_CPU[$pt,$p]}" "${S_PEER_CPU[$st,$p]}" "$rc_" "plain ${S_OK[$pt,$p]}, secure ${S_OK[$st,$p]}")"
            ph+="${ph:+,}\"$p\":{\"plain_mbps\":${S_MBPS[$pt,$p]},\"secure_mbps\":${S_MBPS[$st,$p]},\"ratio\":$r,\"plain_peers_cpu_s\":${S_PEER_CPU[$pt,$p]},\"secure_peers_cpu_s\":${S_PEER_CPU[$st,$p]},\"cpu_ratio\":$rc_}"
        done
        if [ -n "${S_SMALL[$st]:-}" ]; then
            out "$(printf '  %-6s %-8s %10s %10s %6s' "$n" 1-chunk "${S_SMALL[$pt]}" "${S_SMALL[$st]}" "$(fdiv "${S_SMALL[$st]}" "${S_SMALL[$pt]}")")  (median s, not MB/s)"
            ph+=",\"small_median_s\":{\"plain\":${S_SMALL[$pt]},\"secure\":${S_SMALL[$st]}}"
        fi
        sv+="${sv:+,}{\"n_peers\":$n,$ph}"
    done
    secure_json="[$sv]"
fi
json_parts+=("\"secure_vs_plain\":$secure_json")
if [ "$BIG" -ne 0 ]; then
    scenario "p4-${BIG_MB}MB" 4 "$BIG_MB" 0
    scen_tags+=("p4-${BIG_MB}MB")
    rm -f -- "$tmp/files/random-${BIG_MB}MB.bin"
fi
sj=""
for t in "${scen_tags[@]}"; do sj+="${sj:+,}${S_JSON[$t]}"; done
json_parts+=("\"scenarios\":[$sj]")

# ---- 4. scale --------------------------------------------------------------------------------
scale_json=null
if [ "$SCALE" -ne 0 ]; then
    tag="scale$SCALE_PEERS"
    n="$SCALE_PEERS"
    start_peers "$tag" "$n"
    mkdir -p "$tmp/$tag/files"
    total_bytes=0
    for ((i = 0; i < SCALE_FILES; i++)); do
        head -c "$(((5 + i % 6) * 1000000))" /dev/urandom >"$tmp/$tag/files/f$i.bin"
        total_bytes=$((total_bytes + (5 + i % 6) * 1000000))
    done
    sync
    log "$tag: $SCALE_FILES backups at once, degree $SCALE_DEGREE, from peers 1..$n round robin"
    phase_begin "$tag" "$n" scale
    s_load0="$(cut -d' ' -f1-3 /proc/loadavg)"
    t0="$(now)"
    bg=()
    for ((i = 0; i < SCALE_FILES; i++)); do
        home=$((i % n + 1))
        (
            a="$(now)"
            set +e
            timeout --kill-after=5 "$OP_TIMEOUT" "$testapp_bin" --json "$tag-p$home" BACKUP \
                "$tmp/$tag/files/f$i.bin" "$SCALE_DEGREE" >"$tmp/$tag/op$i.out" 2>&1
            r=$?
            echo "$r $(fsub "$(now)" "$a") $home" >"$tmp/$tag/op$i.rc"
        ) &
        bg+=("$!")
    done
    for b in "${bg[@]}"; do wait "$b" || true; done
    scale_wall="$(fsub "$(now)" "$t0")"
    phase_end "$tag" "$n" scale
    s_load1="$(cut -d' ' -f1-3 /proc/loadavg)"
    ok_ops=0 ops_json="" slowest=0
    for ((i = 0; i < SCALE_FILES; i++)); do
        read -r r e home <"$tmp/$tag/op$i.rc" || { r=255 e=null home=null; }
        [ "$r" -eq 0 ] && ok_ops=$((ok_ops + 1))
        ops_json+="${ops_json:+,}{\"file\":$i,\"mb\":$((5 + i % 6)),\"home\":$home,\"rc\":$r,\"wall_s\":$e}"
        slowest="$(awk -v a="$slowest" -v b="$e" 'BEGIN { print (b + 0 > a + 0) ? b : a }')"
    done
    [ "$ok_ops" -eq "$SCALE_FILES" ] || { failed=1; log "$tag: $((SCALE_FILES - ok_ops)) backups failed: $(grep -l '"ok":false' "$tmp/$tag"/op*.out | head -n 3 | xargs -r head -c 300)"; }
    # Replication, from the STATE of every peer (taken by phase_end).
    state_files=()
    for ((id = 1; id <= n; id++)); do state_files+=("$tmp/$tag/state$id.scale.1.json"); done
    set +e
    timeout 60 "$bench_bin" replication --min 2 "${state_files[@]}" >"$tmp/$tag/replication.json" 2>"$tmp/$tag/replication.err"
    repl_rc=$?
    set -e
    [ -s "$tmp/$tag/replication.json" ] || echo '{"ok":false}' >"$tmp/$tag/replication.json"
    [ "$repl_rc" -eq 0 ] || { failed=1; log "$tag: replication check: $(cat "$tmp/$tag/replication.err")"; }
    for ((id = 1; id <= n; id++)); do kill -0 "${pids[id - 1]}" 2>/dev/null || { failed=1; log "$tag: peer $id is no longer running"; }; done
    stop_peers
    [ "$stopped_ok" -eq 1 ] || failed=1
    warn_lines="$(cat "$tmp/$tag"/peer*.log | grep -cE ' (WARN|ERROR) ' || true)"
    agg_mbps="$(rate "$total_bytes" "$scale_wall")"
    out ""
    out "== $tag: $n peers, $SCALE_FILES backups started at once (files of 5-10 MB, $((total_bytes / 1000000)) MB in all, degree $SCALE_DEGREE, homes 1..$n round robin)"
    out "   copies written per chunk: $((n - 1)) (protocol 1.0); load average before/after: $s_load0 / $s_load1"
    out "   completed: $ok_ops/$SCALE_FILES in $scale_wall s (slowest backup $slowest s; $agg_mbps MB/s of files);" \
        "replication: $(grep -o '"chunks":[0-9]*' "$tmp/$tag/replication.json" | cut -d: -f2) chunks, fewest other holders $(grep -o '"fewest_holders":[0-9a-z]*' "$tmp/$tag/replication.json" | cut -d: -f2)," \
        "short of 2: $(grep -o '"short_chunks":[0-9]*' "$tmp/$tag/replication.json" | cut -d: -f2) -> $(grep -q '"ok":true' "$tmp/$tag/replication.json" && echo ok || echo FAILED)"
    out "   RcvbufErrors ${PH_RCV[$tag,scale]} (MC / MDB / MDR sockets: ${PH_CH[$tag,scale,MC]} / ${PH_CH[$tag,scale,MDB]} / ${PH_CH[$tag,scale,MDR]}), InErrors ${PH_RCVIN[$tag,scale]}, UDP datagrams sent / delivered ${PH_OUT[$tag,scale]} / ${PH_IN[$tag,scale]}; WARN/ERROR log lines $warn_lines; clean SIGTERM stop: $([ "$stopped_ok" -eq 1 ] && echo yes || echo NO)"
    out "$(printf '   %-7s %10s %7s %8s %8s  %s' peer "peak KiB" "CPU s" "put res" dropped "CPU s by thread (largest)")"
    pj=""
    for ((id = 1; id <= n; id++)); do
        out "$(printf '   %-7s %10s %7s %8s %8s  %s' "peer$id" "${P_HWM[$tag,scale,$id]}" "${P_CPU[$tag,scale,$id]}" "${P_PUT[$tag,scale,$id]}" "${P_DROP[$tag,scale,$id]}" "${P_THR[$tag,scale,$id]}")"
        pj+="${pj:+,}{\"id\":$id,\"vmhwm_kb\":${P_HWM[$tag,scale,$id]},\"cpu_s\":${P_CPU[$tag,scale,$id]},\"putchunk_resends\":${P_PUT[$tag,scale,$id]},\"backlog_dropped\":${P_DROP[$tag,scale,$id]}}"
    done
    scale_json="{\"n_peers\":$n,\"files\":$SCALE_FILES,\"total_mb\":$((total_bytes / 1000000)),\"degree\":$SCALE_DEGREE,\"completed\":$ok_ops,\"wall_s\":$scale_wall,\"mbps\":$agg_mbps,\"rcvbuf_errors\":${PH_RCV[$tag,scale]},\"udp_in_errors\":${PH_RCVIN[$tag,scale]},\"putchunk_resends\":$(sum_over "$tag" "$n" scale P_PUT),\"backlog_dropped\":$(sum_over "$tag" "$n" scale P_DROP),\"max_peer_vmhwm_kb\":$(max_hwm "$tag" "$n" scale),\"replication\":$(cat "$tmp/$tag/replication.json"),\"backups\":[$ops_json],\"peers\":[$pj],\"warn_error_lines\":$warn_lines,\"clean_stop\":$([ "$stopped_ok" -eq 1 ] && echo true || echo false)}"
fi
json_parts+=("\"scale\":$scale_json")

# ---- targets --------------------------------------------------------------------------------
# yes/no/"-" (not measured) for each target the project aims at.
verdict() { if [ "$1" = null ] || [ -z "$1" ]; then echo "-"; elif awk -v x="$1" -v l="$2" "BEGIN { exit !(x $3 l) }"; then echo met; else echo "NOT met"; fi; }
t4="p4-${MB}MB"
t_json=""
out ""
out "Targets (4 peers, $MB MB, degree $DEGREE unless stated):"
if [ -n "${S_JSON[$t4]:-}" ]; then
    v_b="$(verdict "${S_RATIO[$t4,backup]}" 0.5 '>=')" v_r="$(verdict "${S_RATIO[$t4,restore]}" 0.5 '>=')"
    out "  backup >= 50 % of its limit: ${S_RATIO[$t4,backup]} -> $v_b"
    out "  restore >= 50 % of its limit: ${S_RATIO[$t4,restore]} -> $v_r"
    t_json+="\"backup_ratio_ge_0_5\":\"$v_b\",\"restore_ratio_ge_0_5\":\"$v_r\","
fi
if [ "$SECURE" -eq 1 ] && [ -n "${S_JSON[$t4-secure]:-}" ]; then
    sr_b="$(fdiv "${S_MBPS[$t4-secure,backup]}" "${S_MBPS[$t4,backup]}")" sr_r="$(fdiv "${S_MBPS[$t4-secure,restore]}" "${S_MBPS[$t4,restore]}")"
    v_sb="$(verdict "$sr_b" 0.8 '>=')" v_sr="$(verdict "$sr_r" 0.8 '>=')"
    out "  secure backup >= 0.8 of plain: $sr_b -> $v_sb"
    out "  secure restore >= 0.8 of plain: $sr_r -> $v_sr"
    t_json+="\"secure_backup_ge_0_8_plain\":\"$v_sb\",\"secure_restore_ge_0_8_plain\":\"$v_sr\","
fi
all_hwm=0
for t in "${scen_tags[@]}"; do
    for p in backup restore small; do
        m="$(max_hwm "$t" 16 "$p")"
        [ "$m" -gt "$all_hwm" ] && all_hwm="$m"
        for q in backup restore; do
            v="${S_APP_HWM[$t,$q]:-null}"
            [ "$v" != null ] && [ "$v" -gt "$all_hwm" ] && all_hwm="$v"
        done
    done
done
[ "$SCALE" -eq 0 ] || { m="$(max_hwm "scale$SCALE_PEERS" "$SCALE_PEERS" scale)"; [ "$m" -gt "$all_hwm" ] && all_hwm="$m"; }
v_m="$(verdict "$all_hwm" 62500 '<=')"
out "  peak RSS of every process <= 64 MB (62,500 KiB): largest $all_hwm KiB -> $v_m"
t_json+="\"peak_rss_le_64mb\":\"$v_m\",\"largest_vmhwm_kb\":$all_hwm,"
if [ "$BIG" -ne 0 ] && [ -n "${S_JSON[$t4]:-}" ]; then
    h256="$(max_hwm "$t4" 4 backup restore)" hbig="$(max_hwm "p4-${BIG_MB}MB" 4 backup restore)"
    rb="$(fdiv "$hbig" "$h256")"
    # The bound holds for the large file too. The peak still grows a little with the file: a
    # peer keeps metadata for each chunk it holds (about 0.4 KB), and a longer run spends
    # more time with its queues near their bounds; the growth is printed.
    v_big="$(verdict "$hbig" 62500 '<=')"
    out "  peak RSS <= 64 MB at $BIG_MB MB as at $MB MB: $hbig vs $h256 KiB (x$rb, +$((hbig - h256)) KiB) -> $v_big"
    t_json+="\"rss_big_le_64mb\":\"$v_big\",\"vmhwm_big_kb\":$hbig,\"vmhwm_base_kb\":$h256,"
fi
rcv_total=0
for t in "${scen_tags[@]}"; do rcv_total=$((rcv_total + ${PH_RCV[$t,backup]} + ${PH_RCV[$t,restore]})); done
v_rcv="$(verdict "$rcv_total" 0 '<=')"
out "  no receive-buffer drops during backups and restores: RcvbufErrors $rcv_total -> $v_rcv"
t_json+="\"no_rcvbuf_drops\":\"$v_rcv\",\"rcvbuf_errors_total\":$rcv_total,"
if [ -n "$small_tag" ]; then
    v_s="$(verdict "$plain_small_median" 0.5 '<=')"
    out "  1-chunk backup median <= 0.5 s: $plain_small_median s -> $v_s"
    t_json+="\"small_median_le_0_5s\":\"$v_s\","
    json_parts+=("\"small_backup_median_s\":$plain_small_median")
fi
if [ "$SCALE" -ne 0 ]; then
    v_sc="$( [ "$ok_ops" -eq "$SCALE_FILES" ] && grep -q '"ok":true' "$tmp/scale$SCALE_PEERS/replication.json" && echo met || echo "NOT met")"
    out "  $SCALE_PEERS-peer scale run completes ($ok_ops/$SCALE_FILES backups, every chunk on >= 2 other peers) -> $v_sc"
    t_json+="\"scale_completes\":\"$v_sc\","
fi
json_parts+=("\"targets\":{${t_json%,}}")

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
out ""
out "load average at start / end: $load_start / $load_end$([ "$hwm_reset_ok" -eq 1 ] || echo "; NOTE: VmHWM could not be reset, peaks are since the peer started")"

printf '%s\n' "${report[@]}"
machine="\"machine\":{\"nproc\":$(nproc),\"mem_total\":\"$mem_total\",\"kernel\":\"$(uname -r)\",\"fs\":\"$fs_desc${ext4_journal:+, $ext4_journal}\",\"load_start\":\"$load_start\",\"load_end\":\"$load_end\"}"
body="$(IFS=,; echo "${json_parts[*]}")"
json="$(printf '{"kind":"dbs-bench","date":"%s","rev":"%s","ok":%s,%s,%s}' "$date_utc" "$rev" \
    "$([ "$failed" -eq 0 ] && echo true || echo false)" "$machine" "$body")"
printf '%s\n' "$json"
# The JSON line is built by hand: check it parses.
if ! python3 -c 'import json, sys; json.loads(sys.stdin.read())' <<<"$json"; then
    log "the JSON line above does not parse (a bug in this script)"
    failed=1
fi
exit "$failed"
