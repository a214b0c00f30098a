#!/usr/bin/env bash
# soak.sh: a bounded soak test of dbs on this machine. Builds the release binaries, starts 6
# peers in a private network namespace (loopback only): ids 1-3 run protocol 1.0, ids 4-6 run
# 2.0. Then, for SOAK_SECONDS (default 600), it runs cycles. Each cycle backs up a few random
# files (0 to 3 MB, some exactly on a chunk boundary) at degree 1-3 from random peers (plain or
# ENH operations on the 2.0 peers), all at once; every few cycles it shrinks one peer's space
# with RECLAIM (or RECLAIMENH); it restores every file and compares it with the original (cmp),
# deletes the backups, and gives the reclaimed space back. Any non-zero exit, time-out or
# mismatch is a failure, printed with its command.
#
# For every peer it records the resident set (VmRSS, VmHWM), open file descriptors and threads
# after the first cycle (steady state), every SOAK_RSS_EVERY seconds (between cycles; kept as CSV
# in SOAK_RSS_LOG if set) and at the end. It fails if a peer's fd count grew by more than 10, or
# if its VmRSS grew: in a run of at least 20 minutes, by more than 4 MB over its figure at minute
# 10 (the first sample at or after 600 s); in a shorter run, by more than 50 % + 8 MB over the
# start. It prints each peer's growth in kB/minute (least squares over the samples after minute
# 10 in a long run, over all of them in a short one). At the end it also waits (up to
# SOAK_SETTLE seconds) for the peers to go idle and reports what they still hold: after every
# file was deleted, no peer should store chunks or remember files.
#
# Usage: scripts/soak.sh
#   SOAK_SECONDS=600       how long to start new cycles (the last cycle then finishes)
#   SOAK_FILES=3           files per cycle
#   SOAK_MAX_BYTES=3000000 largest file (0 .. this many bytes)
#   SOAK_RECLAIM_EVERY=4   a RECLAIM in one cycle out of this many (0: never)
#   SOAK_OP_TIMEOUT=180    limit for one testapp call, seconds
#   SOAK_SETTLE=30         at the end, how long to wait for the peers to go idle
#   SOAK_SEED=<n>          seed of bash's $RANDOM (default: from the clock; printed)
#   SOAK_PEER_OPTS="..."   extra options for every peer (e.g. "--log-level debug"); the peers
#                          also inherit the environment (e.g. _RJEM_MALLOC_CONF=... for jemalloc)
#   SOAK_RSS_EVERY=60      seconds between two samples of every peer's VmRSS, fds and threads
#   SOAK_RSS_LOG=<file>    write the samples there as CSV: seconds since the start snapshot,
#                          cycle, peer, version, rss_kb, hwm_kb, fds, threads (one line per peer
#                          and sample; the first at 0 s, the last at the end)
#   SOAK_KEEP_LOGS=<dir>   copy the peer logs there before the temporary directory is removed
#   TMPDIR                 where the temporary directory goes (default /tmp)
# Worst-case running time: build + SOAK_SECONDS + one cycle (at most 4 x SOAK_OP_TIMEOUT plus
# the RECLAIMs) + SOAK_SETTLE + 10 s to stop the peers.
# Exit status: 0 passed; 1 a cycle failed or a peer grew (or died); 2 bad settings; 3 no
# private network namespace (nothing was started).
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(dirname "$(dirname "$self")")"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

SOAK_SECONDS="${SOAK_SECONDS:-600}"
FILES="${SOAK_FILES:-3}"
MAX_BYTES="${SOAK_MAX_BYTES:-3000000}"
RECLAIM_EVERY="${SOAK_RECLAIM_EVERY:-4}"
OP_TIMEOUT="${SOAK_OP_TIMEOUT:-180}"
SETTLE="${SOAK_SETTLE:-30}"
RSS_EVERY="${SOAK_RSS_EVERY:-60}"
for v in SOAK_SECONDS FILES MAX_BYTES RECLAIM_EVERY OP_TIMEOUT SETTLE RSS_EVERY; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "soak: $v must be a whole number (got '${!v}')" >&2; exit 2; }
done
[ "$FILES" -ge 1 ] || { echo "soak: SOAK_FILES must be at least 1" >&2; exit 2; }
[ "$OP_TIMEOUT" -ge 1 ] || { echo "soak: SOAK_OP_TIMEOUT must be at least 1" >&2; exit 2; }
[ "$RSS_EVERY" -ge 1 ] || { echo "soak: SOAK_RSS_EVERY must be at least 1" >&2; exit 2; }
[ -z "${SOAK_SEED:-}" ] || [[ "$SOAK_SEED" =~ ^[0-9]+$ ]] || { echo "soak: SOAK_SEED must be a number" >&2; exit 2; }

NPEERS=6
VERSIONS=(1.0 1.0 1.0 2.0 2.0 2.0) # peer i+1 runs VERSIONS[i]
CHANNELS=(239.88.0.1 8301 239.88.0.2 8302 239.88.0.3 8303)
FULL_KB=100000000 # the default capacity, given back after a RECLAIM
LONG_RUN=1200     # a run this long (s) is judged by its growth after minute 10...
RSS_MARK=600      # ...the first sample at or after this many seconds...
RSS_SLACK_KB=4096 # ...which its VmRSS at the end may exceed by this much at most

log() { printf '[soak %s] %s\n' "$(date +%T)" "$*" >&2; }

# 1. Build (outside the namespace: cargo may need the network to fetch crates), then re-run this
#    script in a fresh network namespace whose only interface is lo: no datagram can leave.
if [ -z "${DBS_SOAK_NETNS:-}" ]; then
    log "building release binaries (peer, testapp)"
    (cd "$root" && cargo build --release -p peer -p testapp) >&2
    if ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
        echo "soak: refusing to run: needs unshare (util-linux) and ip (iproute2)" >&2
        exit 3
    fi
    reexec_in_private_netns DBS_SOAK_NETNS "$self" "$@" || true
    echo "soak: refusing to run: cannot create a private network namespace, so multicast could" \
        "leave the machine." >&2
    printf '  %s\n' "${netns_refusals[@]}" >&2
    echo "  (run it as root, or allow unprivileged user namespaces)" >&2
    exit 3
fi
ip link set lo up || { echo "soak: cannot bring lo up in the namespace" >&2; exit 3; }
only_loopback || { echo "soak: refusing to run: this namespace has interfaces other than lo" >&2; exit 3; }
ip link show lo | grep -q 'UP' || { echo "soak: lo is down" >&2; exit 3; }

peer_bin="$root/target/release/peer"
testapp_bin="$root/target/release/testapp"
if [ ! -x "$peer_bin" ] || [ ! -x "$testapp_bin" ]; then echo "soak: release binaries missing" >&2; exit 1; fi
command -v jq >/dev/null || { echo "soak: needs jq" >&2; exit 1; }

seed="${SOAK_SEED:-$(( $(date +%s%N) % 1000000007 ))}"
RANDOM="$seed"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dbs-soak.XXXXXX")"
export DBS_RUNTIME_DIR="$tmp/run"
mkdir "$tmp/files" "$tmp/out"
failures="$tmp/failures.txt"
: >"$failures"
pids=()
stopped_clean=""

# Stops the peers still running (SIGTERM, then SIGKILL after 10 s), ends the testapp calls
# still running, and removes the temporary directory. Runs on every exit path.
cleanup() {
    local status=$? job
    trap - EXIT INT TERM
    for job in $(jobs -p); do kill -TERM "$job" 2>/dev/null || true; done
    stop_pids "${pids[@]}"
    [ "${#pids[@]}" -eq 0 ] || stopped_clean=" ${stop_statuses[*]}"
    if [ "${#pids[@]}" -gt 0 ]; then
        echo "peer exit statuses after SIGTERM (ids 1-${#pids[@]}):$stopped_clean" >&2
        [[ "$stopped_clean" =~ ^( 0)+$ ]] || { echo "soak: not every peer stopped cleanly" >&2; [ "$status" -ne 0 ] || status=1; }
    fi
    if [ -n "${SOAK_RSS_LOG:-}" ] && [ -f "$tmp/rss.csv" ]; then
        cp "$tmp/rss.csv" "$SOAK_RSS_LOG" || echo "soak: cannot write $SOAK_RSS_LOG" >&2
    fi
    if [ -n "${SOAK_KEEP_LOGS:-}" ]; then
        if mkdir -p "$SOAK_KEEP_LOGS"; then cp "$tmp"/peer*.log "$SOAK_KEEP_LOGS"/ 2>/dev/null || true; fi
    fi
    if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
        for log in "$tmp"/peer*.log; do
            [ -f "$log" ] || continue
            echo "--- last WARN/ERROR lines of $(basename "$log") ---" >&2
            grep -E 'WARN|ERROR' "$log" | tail -n 5 >&2 || true
        done
        echo "soak: exit status $status" >&2
    fi
    rm -rf -- "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "soak: $*" >&2
    exit 1
}
# rand N: a random whole number in 0..N-1 (30 random bits).
rand() { echo $(((RANDOM << 15 | RANDOM) % $1)); }

# tapp OUT ARGS...: runs testapp with a time limit, output to OUT; on failure records the
# command and the first lines of its output in the failure list. Returns testapp's status.
tapp() {
    local out="$1" rc=0
    shift
    timeout --kill-after=5 "$OP_TIMEOUT" "$testapp_bin" "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "(timed out after $OP_TIMEOUT s)" >>"$out"; fi
        printf 'cycle %s: exit %s: testapp %s\n    %s\n' "$cycle" "$rc" "$*" \
            "$(head -c 400 "$out" | tr '\n' ' ')" >>"$failures"
    fi
    return "$rc"
}
fail() { printf 'cycle %s: %s\n' "$cycle" "$*" >>"$failures"; }

# proc_stats PID: "VmRSS_kB VmHWM_kB fds threads" (dashes if the process is gone).
proc_stats() {
    local s fds rss hwm thr
    s="$(awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } $1 == "Threads:" { t = $2 }
        END { if (r == "") exit 1; print r, h, t }' "/proc/$1/status" 2>/dev/null)" || { echo "- - - -"; return; }
    fds="$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    read -r rss hwm thr <<<"$s"
    echo "$rss $hwm $fds $thr"
}
declare -A stat_at
snap() { local id; for ((id = 1; id <= NPEERS; id++)); do stat_at[$1,$id]="$(proc_stats "${pids[id - 1]}")"; done; }
# sample: appends every peer's proc_stats to rss.csv, at the seconds since the start snapshot,
# and returns a one-line summary in $sample_line.
sample() {
    local id rss hwm fds thr t=$((SECONDS - start_time))
    sample_line="${t}s c$cycle"
    for ((id = 1; id <= NPEERS; id++)); do
        read -r rss hwm fds thr <<<"$(proc_stats "${pids[id - 1]}")"
        echo "$t,$cycle,$id,${VERSIONS[id - 1]},$rss,$hwm,$fds,$thr" >>"$tmp/rss.csv"
        sample_line+=" p$id:${rss}k/${fds}fd/${thr}t"
    done
}

# 2. Start the peers and wait for their access points.
log "network: $DBS_SOAK_NETNS (only lo), temp dir $tmp, seed $seed, load: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r -a peer_opts <<<"${SOAK_PEER_OPTS:-}"
for ((id = 1; id <= NPEERS; id++)); do
    "$peer_bin" "${VERSIONS[id - 1]}" "$id" "peer$id" "${CHANNELS[@]}" \
        --dir "$tmp/peer$id" "${peer_opts[@]}" >"$tmp/peer$id.log" 2>&1 &
    pids+=("$!")
done
deadline=$((SECONDS + 30))
for ((id = 1; id <= NPEERS; id++)); do
    until "$testapp_bin" "peer$id" STATE >/dev/null 2>&1; do
        kill -0 "${pids[id - 1]}" 2>/dev/null || die "peer $id exited at start: $(tail -n 3 "$tmp/peer$id.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "peer $id did not answer on its access point in 30 s"
        sleep 0.1
    done
done
log "peers 1-$NPEERS up (versions ${VERSIONS[*]}); cycles for $SOAK_SECONDS s"

# 3. Cycles.
cycle=0
files_done=0
bytes_done=0
reclaims=0
ops=0
trend="$tmp/trend.txt"
: >"$trend"

run_cycle() {
    local i id ver enh size deg file r_id r_kb r_op restored
    local -a f_path f_home f_enh f_deg bg
    cycle=$((cycle + 1))
    # Choose and write the files.
    for ((i = 0; i < FILES; i++)); do
        id=$((1 + $(rand "$NPEERS")))
        ver="${VERSIONS[id - 1]}"
        enh=""
        [ "$ver" = 1.0 ] || [ "$(rand 2)" -eq 0 ] || enh=ENH
        case "$(rand 6)" in
        0) size=$((64000 * $(rand $((MAX_BYTES / 64000 + 1))))) ;; # exactly on a chunk boundary
        1) size=$(rand 64001) ;;                                   # one chunk (or empty)
        *) size=$(rand $((MAX_BYTES + 1))) ;;
        esac
        deg=$((1 + $(rand 3)))
        file="$tmp/files/c${cycle}-f$i-p$id$enh-d$deg-${size}B.bin"
        head -c "$size" /dev/urandom >"$file"
        f_path[i]="$file" f_home[i]=$id f_enh[i]=$enh f_deg[i]=$deg
        bytes_done=$((bytes_done + size))
    done
    # Backups, all at once.
    bg=()
    for ((i = 0; i < FILES; i++)); do
        tapp "$tmp/out/b$i" "peer${f_home[i]}" "BACKUP${f_enh[i]}" "${f_path[i]}" "${f_deg[i]}" &
        bg+=("$!")
    done
    local -a ok_backup=()
    for ((i = 0; i < FILES; i++)); do
        if wait "${bg[i]}"; then ok_backup[i]=1; else ok_backup[i]=0; fi
        ops=$((ops + 1))
    done
    # Sometimes: one peer shrinks its space, evicting chunks the restores below will need.
    r_id=""
    if [ "$RECLAIM_EVERY" -gt 0 ] && [ "$(rand "$RECLAIM_EVERY")" -eq 0 ]; then
        r_id=$((1 + $(rand "$NPEERS")))
        r_kb=$(( $(rand 3) == 0 ? 0 : $(rand 2000) ))
        r_op=RECLAIM
        [ "${VERSIONS[r_id - 1]}" = 1.0 ] || [ "$(rand 2)" -eq 0 ] || r_op=RECLAIMENH
        tapp "$tmp/out/r" "peer$r_id" "$r_op" "$r_kb" || true
        reclaims=$((reclaims + 1))
        ops=$((ops + 1))
    fi
    # Restores (of the files whose backup succeeded), all at once, then compare.
    bg=()
    for ((i = 0; i < FILES; i++)); do
        bg[i]=""
        [ "${ok_backup[i]}" -eq 1 ] || continue
        tapp "$tmp/out/s$i" "peer${f_home[i]}" "RESTORE${f_enh[i]}" "${f_path[i]}" &
        bg[i]="$!"
    done
    for ((i = 0; i < FILES; i++)); do
        [ -n "${bg[i]}" ] || continue
        ops=$((ops + 1))
        wait "${bg[i]}" || continue
        restored="$tmp/peer${f_home[i]}/restored/$(basename "${f_path[i]}")"
        if [ ! -f "$restored" ]; then
            fail "no restored file $restored after: testapp peer${f_home[i]} RESTORE${f_enh[i]} ${f_path[i]}"
        elif ! cmp -s "${f_path[i]}" "$restored"; then
            fail "restored file differs: cmp ${f_path[i]} $restored ($(cmp "${f_path[i]}" "$restored" 2>&1 | head -c 200))"
        fi
        rm -f -- "$restored"
    done
    # Deletes, all at once (also of files whose backup fell short).
    bg=()
    for ((i = 0; i < FILES; i++)); do
        tapp "$tmp/out/d$i" "peer${f_home[i]}" "DELETE${f_enh[i]}" "${f_path[i]}" &
        bg+=("$!")
    done
    for ((i = 0; i < FILES; i++)); do
        wait "${bg[i]}" || true
        ops=$((ops + 1))
        rm -f -- "${f_path[i]}"
    done
    files_done=$((files_done + FILES))
    # Give the reclaimed space back.
    if [ -n "$r_id" ]; then
        tapp "$tmp/out/r" "peer$r_id" RECLAIM "$FULL_KB" || true
        ops=$((ops + 1))
    fi
    for ((id = 1; id <= NPEERS; id++)); do
        kill -0 "${pids[id - 1]}" 2>/dev/null || { fail "peer $id died"; return 1; }
    done
}

run_cycle || true
sleep 2
snap start
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
start_time=$SECONDS
echo "seconds,cycle,peer,version,rss_kb,hwm_kb,fds,threads" >"$tmp/rss.csv"
sample
deadline=$((SECONDS + SOAK_SECONDS))
next_sample=$((start_time + RSS_EVERY))
while [ "$SECONDS" -lt "$deadline" ]; do
    run_cycle || break
    if [ "$SECONDS" -ge "$next_sample" ]; then
        while [ "$next_sample" -le "$SECONDS" ]; do next_sample=$((next_sample + RSS_EVERY)); done
        sample
        echo "$sample_line" >>"$trend"
        log "$sample_line; failures so far: $(grep -c '^cycle' "$failures" || true)"
    fi
done
elapsed=$((SECONDS - start_time))
sleep 2
snap end
sample
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# 4. Let the peers go idle (every file was deleted), then read what they still hold.
settle_deadline=$((SECONDS + SETTLE))
while :; do
    busy=0
    for ((id = 1; id <= NPEERS; id++)); do
        n="$("$testapp_bin" --json "peer$id" STATE 2>/dev/null | jq -r '.counters.instances // 1')" || n=1
        [ "$n" = 0 ] || busy=1
    done
    if [ "$busy" -eq 0 ] || [ "$SECONDS" -ge "$settle_deadline" ]; then break; fi
    sleep 1
done

# 5. Report.
grew=0
long=0
slope_from=0
if [ "$elapsed" -ge "$LONG_RUN" ]; then long=1 slope_from=$RSS_MARK; fi
# rss_summary ID: "MARK_kB SLOPE": the peer's VmRSS at the first sample at or after RSS_MARK
# seconds (- if none), and its least-squares growth in kB/minute over the samples at or after
# slope_from seconds (- if fewer than two).
rss_summary() {
    awk -F, -v id="$1" -v mark="$RSS_MARK" -v from="$slope_from" '
        NR > 1 && $3 == id && $5 != "-" {
            if (m == "" && $1 >= mark) m = $5
            if ($1 >= from) { n++; sx += $1; sy += $5; sxx += $1 * $1; sxy += $1 * $5 }
        }
        END {
            d = n * sxx - sx * sx
            printf "%s %s\n", (m == "" ? "-" : m), (n >= 2 && d > 0 ? sprintf("%.0f", 60 * (n * sxy - sx * sy) / d) : "-")
        }' "$tmp/rss.csv"
}
echo
echo "=== soak: $cycle cycles ($((cycle - 1)) after the start snapshot, $elapsed s), $files_done files, $((bytes_done / 1000000)) MB backed up, $reclaims reclaims, $ops testapp operations; seed $seed"
echo "load average: start of cycles $load_start / end $load_end ($(nproc) CPUs)"
if [ "$long" -eq 1 ]; then
    echo "rule: VmRSS at the end within $RSS_SLACK_KB kB of minute $((RSS_MARK / 60)) (RSS10), fds within 10 of the start"
else
    echo "rule (run shorter than $((LONG_RUN / 60)) min): VmRSS at the end within 50 % + 8192 kB of the start, fds within 10"
fi
printf '%-5s %-4s | %9s %9s %4s %4s | %9s | %9s %9s %4s %4s | %9s | %s\n' peer ver \
    "RSS0 kB" "HWM0 kB" fd0 thr0 "RSS10 kB" "RSS1 kB" "HWM1 kB" fd1 thr1 "kB/min" verdict
for ((id = 1; id <= NPEERS; id++)); do
    read -r r0 h0 f0 t0 <<<"${stat_at[start,$id]}"
    read -r r1 h1 f1 t1 <<<"${stat_at[end,$id]}"
    read -r r10 slope <<<"$(rss_summary "$id")"
    verdict=ok
    if [ "$r0" = - ] || [ "$r1" = - ]; then
        verdict="GONE"
        grew=1
    else
        if [ "$long" -eq 1 ]; then
            if [ "$r10" = - ] || [ "$r1" -gt $((r10 + RSS_SLACK_KB)) ]; then verdict="RSS GREW"; grew=1; fi
        elif [ "$r1" -gt $((r0 * 3 / 2 + 8192)) ]; then
            verdict="RSS GREW"
            grew=1
        fi
        if [ "$f1" -gt $((f0 + 10)) ]; then verdict="${verdict/ok/} FDS GREW"; grew=1; fi
    fi
    printf '%-5s %-4s | %9s %9s %4s %4s | %9s | %9s %9s %4s %4s | %9s | %s\n' "$id" "${VERSIONS[id - 1]}" \
        "$r0" "$h0" "$f0" "$t0" "$r10" "$r1" "$h1" "$f1" "$t1" "$slope" "$verdict"
done
echo "(RSS10: VmRSS at the first sample at or after $RSS_MARK s; kB/min: least-squares growth of VmRSS over the samples from $slope_from s)"
if [ -s "$trend" ]; then
    echo "--- every $RSS_EVERY s: VmRSS / fds / threads per peer"
    cat "$trend"
fi
echo "--- after the run (idle wait up to $SETTLE s): what each peer still holds (every file was deleted)"
for ((id = 1; id <= NPEERS; id++)); do
    "$testapp_bin" --json "peer$id" STATE 2>/dev/null | jq -r --arg id "$id" \
        '"peer \($id): files backed up \(.backed_up | length), chunks stored \(.stored | length) (\(.used_kb) kB), instances \(.counters.instances), timers \(.counters.timers), putchunk resends \(.counters.putchunk_resends), getchunk resends \(.counters.getchunk_resends), backlog dropped \(.counters.backlog_dropped), disk errors \(.counters.disk_errors)"' ||
        echo "peer $id: STATE failed"
done
echo "--- WARN/ERROR lines in the peer logs"
for ((id = 1; id <= NPEERS; id++)); do
    n="$(grep -cE ' (WARN|ERROR) ' "$tmp/peer$id.log" || true)"
    echo "peer $id: $n"
    [ "$n" -eq 0 ] || grep -E ' (WARN|ERROR) ' "$tmp/peer$id.log" | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -n 3
done
nfail="$(grep -c '^cycle' "$failures" || true)"
echo "--- failures: $nfail"
cat "$failures"
if [ "$nfail" -gt 0 ] || [ "$grew" -ne 0 ]; then
    echo "soak FAILED"
    exit 1
fi
echo "soak OK"
