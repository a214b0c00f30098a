#!/usr/bin/env bash
# bench.sh: measures dbs on this machine. Builds the release binaries, starts BENCH_PEERS peers
# (default 4) in a private network namespace (loopback only), backs up a BENCH_MB random file
# (default 100 MB, 1 MB = 1,000,000 bytes) from peer 1 at degree BENCH_DEGREE (default 2),
# restores it and compares it with the original, then times 5 one-chunk (10 KB) backups at
# degree 1. Reports backup/restore throughput, each peer's peak RSS (VmHWM) and CPU seconds,
# and the UDP receive-buffer drops (RcvbufErrors) counted during each phase. Ends with one JSON
# line on stdout. Everything lives in a temporary directory that is removed at the end; the
# peers are stopped with SIGTERM (SIGKILL after 10 s) on every exit path.
#
# Usage: scripts/bench.sh
#   BENCH_MB=100 BENCH_PEERS=4 BENCH_DEGREE=2 scripts/bench.sh
#   BENCH_OP_TIMEOUT=<s>   limit for one testapp call (default 300 + 3 s per MB)
#   BENCH_PEER_OPTS="..."  extra options for every peer (e.g. "--rate 200 --workers 2")
#   BENCH_KEEP_LOGS=<dir>  copy the peer logs there before the temp dir is removed
# Exit status: 0 all phases succeeded, 1 a phase failed (still reported), 2 bad settings,
# 3 no private network namespace available.
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(dirname "$(dirname "$self")")"

MB="${BENCH_MB:-100}"
NPEERS="${BENCH_PEERS:-4}"
DEGREE="${BENCH_DEGREE:-2}"
SMALL_RUNS=5
SMALL_BYTES=10000
for v in MB NPEERS DEGREE; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number (got '${!v}')" >&2; exit 2; }
done
[ "$NPEERS" -ge 2 ] || { echo "bench: BENCH_PEERS must be at least 2" >&2; exit 2; }
[ "$DEGREE" -ge 1 ] && [ "$DEGREE" -le 9 ] || { echo "bench: BENCH_DEGREE must be 1-9" >&2; exit 2; }
[ "$MB" -ge 1 ] || { echo "bench: BENCH_MB must be at least 1" >&2; exit 2; }
OP_TIMEOUT="${BENCH_OP_TIMEOUT:-$((300 + 3 * MB))}"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# Only the loopback interface in this network namespace?
only_loopback() {
    local names
    names="$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//')" || return 1
    [ -n "$names" ] && [ "$names" = lo ]
}

# 1. Build (outside the namespace: cargo may need the network to fetch crates), then re-run
#    this script in a private network namespace whose only interface is lo.
if [ -z "${DBS_BENCH_NETNS:-}" ]; then
    log "building release binaries"
    (cd "$root" && cargo build --release --workspace) >&2
    if only_loopback; then
        export DBS_BENCH_NETNS=inherited
    else
        why=()
        for flags in -rn -n; do
            if err="$(unshare "$flags" true 2>&1)"; then
                DBS_BENCH_NETNS="unshare $flags" exec unshare "$flags" bash "$self" "$@"
            fi
            why+=("unshare $flags: ${err:-failed}")
        done
        echo "bench: refusing to run: cannot create a private network namespace, and this one has" \
            "interfaces other than lo, so multicast could leave the machine." >&2
        printf '  %s\n' "${why[@]}" >&2
        echo "  (needs user namespaces, e.g. sysctl kernel.unprivileged_userns_clone=1, or root)" >&2
        exit 3
    fi
fi
if [ "$DBS_BENCH_NETNS" != inherited ]; then
    ip link set lo up || { echo "bench: cannot bring lo up in the namespace" >&2; exit 3; }
fi
only_loopback || { echo "bench: refusing to run: this namespace has interfaces other than lo" >&2; exit 3; }
ip link show lo | grep -q 'UP' || { echo "bench: lo is down" >&2; exit 3; }

peer_bin="$root/target/release/peer"
testapp_bin="$root/target/release/testapp"
[ -x "$peer_bin" ] && [ -x "$testapp_bin" ] || { echo "bench: release binaries missing" >&2; exit 1; }
CLK_TCK="$(getconf CLK_TCK)"
# Which code is measured: $BENCH_REV if set, else the git commit (+dirty if the tree has edits).
rev="${BENCH_REV:-$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dbs-bench.XXXXXX")"
export DBS_RUNTIME_DIR="$tmp/run"
pids=()

# Stops the peers still running (SIGTERM, then SIGKILL after 10 s) and removes the temp dir.
cleanup() {
    local status=$? pid i log
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
        mkdir -p "$BENCH_KEEP_LOGS" && cp "$tmp"/peer*.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        for log in "$tmp"/peer*.log; do
            [ -f "$log" ] || continue
            echo "--- last lines of $(basename "$log") ---" >&2
            tail -n 15 "$log" >&2
        done
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
# fsub A B: A - B with 3 decimals; fdiv A B: A / B with 2 decimals (null if B is 0).
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "null" }'; }
# udp_counter NAME: one field of the Udp: line of /proc/net/snmp (this namespace only).
udp_counter() {
    awk -v want="$1" '$1 == "Udp:" { if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 }
        else { print $col[want]; exit } }' /proc/net/snmp
}
udp_snapshot() { echo "$(udp_counter RcvbufErrors) $(udp_counter InDatagrams) $(udp_counter OutDatagrams) $(udp_counter InErrors)"; }
# cpu_s PID: user + system CPU seconds of a process (all its threads).
cpu_s() {
    local s f
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo null; return; }
    s="${s##*) }"
    read -r -a f <<<"$s"
    awk -v u="${f[11]}" -v k="${f[12]}" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (u + k) / t }'
}
vmhwm_kb() { awk '$1 == "VmHWM:" { print $2; found = 1 } END { if (!found) print "null" }' "/proc/$1/status" 2>/dev/null || echo null; }
# threads_cpu PID: CPU seconds per thread name, largest first (where the peer spends its time).
threads_cpu() {
    local t s f name
    for t in /proc/"$1"/task/*; do
        name="$(cat "$t/comm" 2>/dev/null)" || continue
        s="$(cat "$t/stat" 2>/dev/null)" || continue
        s="${s##*) }"
        read -r -a f <<<"$s"
        echo "$name $((f[11] + f[12]))"
    done | awk -v t="$CLK_TCK" '{ c[$1] += $2; n[$1]++ }
        END { for (k in c) printf "%.2f %s(x%d)\n", c[k] / t, k, n[k] }' | sort -rn | head -n 6 |
        awk '{ printf "%s%s %ss", (NR > 1 ? ", " : ""), $2, $1 }'
}
# testapp_timed OUTFILE ARGS...: runs testapp with a time limit; sets $rc and $elapsed.
testapp_timed() {
    local out="$1" t0 t1
    shift
    t0="$(now)"
    set +e
    timeout --kill-after=5 "$OP_TIMEOUT" "$testapp_bin" "$@" >"$out" 2>&1
    rc=$?
    set -e
    t1="$(now)"
    elapsed="$(fsub "$t1" "$t0")"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "(timed out after $OP_TIMEOUT s)" >>"$out"; fi
}

# 2. Start the peers and wait for their access points.
log "network: $DBS_BENCH_NETNS (only lo), temp dir $tmp; $NPEERS peers, file $MB MB, degree $DEGREE"
read -r -a peer_opts <<<"${BENCH_PEER_OPTS:-}"
for ((id = 1; id <= NPEERS; id++)); do
    "$peer_bin" 1.0 "$id" "peer$id" 239.77.0.1 8101 239.77.0.2 8102 239.77.0.3 8103 \
        --dir "$tmp/peer$id" "${peer_opts[@]}" >"$tmp/peer$id.log" 2>&1 &
    pids+=("$!")
done
deadline=$((SECONDS + 30))
for ((id = 1; id <= NPEERS; id++)); do
    until "$testapp_bin" "peer$id" STATE >/dev/null 2>&1; do
        kill -0 "${pids[id - 1]}" 2>/dev/null || die "peer $id exited at start (see its log)"
        [ "$SECONDS" -lt "$deadline" ] || die "peer $id did not answer on its access point in 30 s"
        sleep 0.1
    done
done
log "all $NPEERS peers answer STATE"

mkdir "$tmp/files"
file="$tmp/files/bench-${MB}MB.bin"
log "generating $MB MB of random data"
head -c "$((MB * 1000000))" /dev/urandom >"$file"
bytes="$(stat -c %s "$file")"
file_mb="$(awk -v b="$bytes" 'BEGIN { printf "%.3f", b / 1e6 }')"
chunks=$((bytes / 64000 + 1))
sync

declare -A cpu_at
snap_cpu() { local id; for ((id = 1; id <= NPEERS; id++)); do cpu_at[$1,$id]="$(cpu_s "${pids[id - 1]}")"; done; }
snap_cpu start
failed=0
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# 3. Backup.
log "BACKUP ($chunks chunks, degree $DEGREE)"
read -r rb0 in0 out0 ie0 <<<"$(udp_snapshot)"
testapp_timed "$tmp/backup.out" --json peer1 BACKUP "$file" "$DEGREE"
read -r rb1 in1 out1 ie1 <<<"$(udp_snapshot)"
snap_cpu backup
backup_s="$elapsed"
backup_rc="$rc"
rcv_backup=$((rb1 - rb0))
if [ "$backup_rc" -eq 0 ]; then
    backup_status=ok
    backup_mbps="$(fdiv "$file_mb" "$backup_s")"
else
    backup_status="FAILED (testapp exit $backup_rc)"
    backup_mbps=null
    failed=1
    log "backup failed: $(head -c 600 "$tmp/backup.out")"
fi
backup_short="$(sed -n 's/.*"short":\[\([^]]*\)\].*/\1/p' "$tmp/backup.out" | tr ',' '\n' | grep -c . || true)"

# 4. Restore (attempted even if the backup fell short, reported as failed, never aborts the run).
log "RESTORE"
read -r rr0 rin0 rout0 rie0 <<<"$(udp_snapshot)"
testapp_timed "$tmp/restore.out" --json peer1 RESTORE "$file"
read -r rr1 rin1 rout1 rie1 <<<"$(udp_snapshot)"
snap_cpu restore
restore_s="$elapsed"
restore_rc="$rc"
rcv_restore=$((rr1 - rr0))
restore_mbps=null
if [ "$restore_rc" -eq 0 ]; then
    restored="$(sed -n 's/.*"restored_to":"\([^"]*\)".*/\1/p' "$tmp/restore.out")"
    [ -n "$restored" ] || restored="$tmp/peer1/restored/$(basename "$file")"
    if [ ! -f "$restored" ]; then
        restore_status="FAILED (no file at $restored)"
    elif cmp -s "$file" "$restored"; then
        restore_status=ok
        restore_mbps="$(fdiv "$file_mb" "$restore_s")"
    else
        restore_status="FAILED (restored file differs from the original)"
    fi
    rm -f -- "$restored"
else
    restore_status="FAILED (testapp exit $restore_rc)"
fi
if [ "$restore_status" != ok ]; then
    failed=1
    log "restore failed: $restore_status: $(head -c 600 "$tmp/restore.out")"
fi

# 5. One-chunk backups: 5 different 10 KB files at degree 1, median wall time.
log "$SMALL_RUNS one-chunk backups ($SMALL_BYTES bytes, degree 1)"
small_times=()
small_fail=0
read -r rs0 _ _ _ <<<"$(udp_snapshot)"
for ((i = 1; i <= SMALL_RUNS; i++)); do
    head -c "$SMALL_BYTES" /dev/urandom >"$tmp/files/small$i.bin"
    testapp_timed "$tmp/small$i.out" --json peer1 BACKUP "$tmp/files/small$i.bin" 1
    if [ "$rc" -eq 0 ]; then small_times+=("$elapsed"); else small_fail=$((small_fail + 1)); fi
done
read -r rs1 _ _ _ <<<"$(udp_snapshot)"
rcv_small=$((rs1 - rs0))
if [ "${#small_times[@]}" -gt 0 ]; then
    small_sorted="$(printf '%s\n' "${small_times[@]}" | sort -g | paste -sd ' ' -)"
    small_median="$(printf '%s\n' "${small_times[@]}" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
else
    small_sorted="-"
    small_median=null
fi
[ "$small_fail" -eq 0 ] || { failed=1; log "$small_fail one-chunk backups failed: $(head -c 300 "$tmp/small1.out")"; }

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# 6. Per-peer figures, read just before the peers are stopped.
declare -A hwm cpu threads
for ((id = 1; id <= NPEERS; id++)); do
    pid="${pids[id - 1]}"
    kill -0 "$pid" 2>/dev/null || { failed=1; log "peer $id is no longer running"; }
    hwm[$id]="$(vmhwm_kb "$pid")"
    cpu[$id]="$(cpu_s "$pid")"
    threads[$id]="$(threads_cpu "$pid" 2>/dev/null || true)"
done
# Protocol counters from STATE (after the figures above, so that STATE does not inflate them);
# a build without counters in STATE reports "-" / null.
declare -A ctr
ctr_names=(putchunk_resends getchunk_resends backlog_dropped bad_bodies send_errors chunks_stored)
for ((id = 1; id <= NPEERS; id++)); do
    timeout 30 "$testapp_bin" --json "peer$id" STATE >"$tmp/state$id.json" 2>/dev/null || true
    for c in "${ctr_names[@]}"; do
        v="$(grep -o "\"$c\":[0-9]*" "$tmp/state$id.json" | head -n 1 | cut -d: -f2)"
        ctr[$c,$id]="${v:-null}"
        if [ -n "$v" ]; then ctr[$c]=$((${ctr[$c]:-0} + v)); fi
    done
done
for c in "${ctr_names[@]}"; do ctr[$c]="${ctr[$c]:-null}"; done

stopped_ok=1
for ((id = 1; id <= NPEERS; id++)); do
    pid="${pids[id - 1]}"
    kill -TERM "$pid" 2>/dev/null || true
done
for ((id = 1; id <= NPEERS; id++)); do
    pid="${pids[id - 1]}"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        stopped_ok=0
        log "peer $id ignored SIGTERM for 10 s: killed"
    fi
    set +e; wait "$pid" 2>/dev/null; st=$?; set -e
    [ "$st" -eq 0 ] || { stopped_ok=0; log "peer $id exited with status $st after SIGTERM"; }
done
pids=()
# Warnings and errors the peers logged (e.g. chunks short of their degree, retransmissions).
warn_lines="$(cat "$tmp"/peer*.log | grep -cE ' (WARN|ERROR) ' || true)"

# 7. Report.
pcpu() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "null" || b == "null") print "-"; else printf "%.2f", a - b }'; }
{
    echo
    echo "dbs benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r), code $rev"
    echo "$NPEERS peers (protocol 1.0${BENCH_PEER_OPTS:+, options: $BENCH_PEER_OPTS}), file $file_mb MB ($chunks chunks), degree $DEGREE, 1 MB = 10^6 bytes"
    echo "peer trees on $(df -PT "$tmp" | awk 'NR == 2 { print $1 " (" $2 ")" }'); load average before/after: $load_start / $load_end"
    echo
    printf '%-28s %10s %10s %10s  %s\n' phase "wall s" "MB/s" "rcvbuf err" status
    printf '%-28s %10s %10s %10s  %s\n' "backup (peer1, degree $DEGREE)" "$backup_s" "$backup_mbps" "$rcv_backup" "$backup_status"
    printf '%-28s %10s %10s %10s  %s\n' "restore (peer1)" "$restore_s" "$restore_mbps" "$rcv_restore" "$restore_status"
    printf '%-28s %10s %10s %10s  %s\n' "1-chunk backup, median of $SMALL_RUNS" "$small_median" "-" "$rcv_small" \
        "$([ "$small_fail" -eq 0 ] && echo ok || echo "$small_fail FAILED"); runs: $small_sorted"
    echo
    echo "UDP datagrams in/out (all peers): backup $((in1 - in0))/$((out1 - out0)), restore $((rin1 - rin0))/$((rout1 - rout0));" \
        "InErrors: backup $((ie1 - ie0)), restore $((rie1 - rie0)); chunks reported short: ${backup_short:-0};" \
        "WARN/ERROR log lines: $warn_lines; clean SIGTERM stop: $([ "$stopped_ok" -eq 1 ] && echo yes || echo NO)"
    echo
    echo "Peer counters from STATE, whole run (put/get resends = PUTCHUNK/GETCHUNK sent again; dropped = messages"
    echo "the peer's worker backlog discarded; bad = CHUNK bodies refused; stored = chunks stored here):"
    printf '%-5s %12s %10s %10s %10s %10s  %-8s %-8s %-8s %-4s %-7s  %s\n' peer "VmHWM KiB" "CPU s" "backup s" "restore s" "1-chunk s" \
        "put res" "get res" dropped bad stored "CPU by thread (total)"
    for ((id = 1; id <= NPEERS; id++)); do
        printf '%-5s %12s %10s %10s %10s %10s  %-8s %-8s %-8s %-4s %-7s  %s\n' "$id" "${hwm[$id]}" "${cpu[$id]}" \
            "$(pcpu "${cpu_at[backup,$id]}" "${cpu_at[start,$id]}")" \
            "$(pcpu "${cpu_at[restore,$id]}" "${cpu_at[backup,$id]}")" \
            "$(pcpu "${cpu[$id]}" "${cpu_at[restore,$id]}")" \
            "${ctr[putchunk_resends,$id]}" "${ctr[getchunk_resends,$id]}" "${ctr[backlog_dropped,$id]}" \
            "${ctr[bad_bodies,$id]}" "${ctr[chunks_stored,$id]}" "${threads[$id]}"
    done
    echo
}

peers_json=""
for ((id = 1; id <= NPEERS; id++)); do
    peers_json+="${peers_json:+,}{\"id\":$id,\"vmhwm_kb\":${hwm[$id]},\"cpu_s\":${cpu[$id]}}"
done
printf '{"backup_mbps":%s,"restore_mbps":%s,"peers":[%s],"rcvbuf_errors_backup":%s,"rcvbuf_errors_restore":%s,"file_mb":%s,"degree":%s,"n_peers":%s,"backup_s":%s,"restore_s":%s,"backup_ok":%s,"restore_ok":%s,"small_backup_median_s":%s,"small_backup_runs":%s,"small_backup_failures":%s,"rcvbuf_errors_small":%s,"putchunk_resends":%s,"getchunk_resends":%s,"backlog_dropped":%s,"bad_bodies":%s,"rev":"%s"}\n' \
    "$backup_mbps" "$restore_mbps" "$peers_json" "$rcv_backup" "$rcv_restore" "$file_mb" "$DEGREE" "$NPEERS" \
    "$backup_s" "$restore_s" "$([ "$backup_status" = ok ] && echo true || echo false)" \
    "$([ "$restore_status" = ok ] && echo true || echo false)" "$small_median" "$SMALL_RUNS" "$small_fail" "$rcv_small" \
    "${ctr[putchunk_resends]}" "${ctr[getchunk_resends]}" "${ctr[backlog_dropped]}" "${ctr[bad_bodies]}" "$rev"
exit "$failed"
