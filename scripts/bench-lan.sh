#!/usr/bin/env bash
# bench-lan.sh (also `BENCH_LAN=1 scripts/bench.sh`): dbs on an emulated Ethernet LAN, the
# harness of tests/netns: 4 hosts, each in its own network namespace on one bridge, links of
# MTU BENCH_LAN_MTU (1500) shaped to 1 Gbit/s each way (`tc tbf`), frame loss on the bridge (a
# bridge-family nftables table). For each loss in BENCH_LAN_LOSS (per mille, "0 1 10": 0, 0.1
# and 1 %): first the LAN itself (dbs-bench mc-send on host 1 to mc-receive on hosts 2-4,
# unpaced, 1,400- and 64,000-byte datagrams), then a BENCH_MB (256) MB file backed up at
# degree 2 from host 1 and restored, for each protocol in BENCH_LAN_VERSIONS ("2.0"; "1.0 2.0"
# for both: 1.0 at 1 % loss takes many minutes). Prints MB/s and the ratio to the line rate
# (125 MB/s), resends, NACKs and repairs, the hosts' ReasmFails/RcvbufErrors, CPU seconds and
# peak RSS per peer, then one JSON line (the last line of stdout).
#
# BENCH_PEER_OPTS: more options for every peer (e.g. "--window 2048").
# Usage: scripts/bench-lan.sh    BENCH_LAN_MTU=9000 BENCH_LAN_LOSS="0 1" scripts/bench-lan.sh
# Exit status: 0 every run succeeded, 1 a run failed, 2 bad settings, 3 no namespaces.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MB="${BENCH_MB:-256}"
MTU="${BENCH_LAN_MTU:-1500}"
LOSS="${BENCH_LAN_LOSS:-0 1 10}"
VERSIONS="${BENCH_LAN_VERSIONS:-2.0}"
[[ "$MB" =~ ^[0-9]+$ ]] && [ "$MB" -ge 1 ] || { echo "bench-lan: BENCH_MB must be a whole number >= 1" >&2; exit 2; }
[[ "$MTU" =~ ^[0-9]+$ ]] && [ "$MTU" -ge 576 ] && [ "$MTU" -le 65535 ] ||
    { echo "bench-lan: BENCH_LAN_MTU must be 576-65535" >&2; exit 2; }
for l in $LOSS; do
    [[ "$l" =~ ^[0-9]+$ ]] && [ "$l" -le 1000 ] || { echo "bench-lan: BENCH_LAN_LOSS: per mille, 0-1000" >&2; exit 2; }
done
for v in $VERSIONS; do
    [ "$v" = 1.0 ] || [ "$v" = 2.0 ] || { echo "bench-lan: BENCH_LAN_VERSIONS: 1.0 and/or 2.0" >&2; exit 2; }
done
for t in ip nft tc unshare nsenter; do
    command -v "$t" >/dev/null || { echo "bench-lan: needs $t (scripts/setup.sh installs it)" >&2; exit 3; }
done

log() { printf '[bench-lan %s] %s\n' "$(date +%T)" "$*" >&2; }
log "building release binaries and the benchmark"
(cd "$root" && cargo build --release --workspace && cargo test --release --test faults --no-run) >&2
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
failed=0
for v in $VERSIONS; do
    log "protocol $v, MTU $MTU, $MB MB, frame loss (per mille) $LOSS"
    # Every host, the bridge and the test itself in namespaces of their own: nothing leaves.
    if ! (cd "$root" && DBS_LAN_MB="$MB" DBS_LAN_MTU="$MTU" DBS_LAN_LOSS="$LOSS" DBS_LAN_ONLY="$v" DBS_LAN_PEER_OPTS="${BENCH_PEER_OPTS:-}" \
        timeout 3600 unshare -rn bash -c 'ip link set lo up &&
            cargo test --release --test faults -- --ignored --nocapture --exact lan_throughput') \
        2>&1 | tee -a "$out" | grep -E '^(raw multicast|[12]\.0, MTU)' >&2; then
        failed=1
    fi
done
grep -q 'test result: ok' "$out" || failed=1
grep -q '^lan-json ' "$out" || { echo "bench-lan: no figures (see the output above)" >&2; exit 1; }
python3 - "$out" <<'PY' || failed=1
import json, sys
runs = [json.loads(l[len("lan-json "):]) for l in open(sys.argv[1]) if l.startswith("lan-json ")]
for r in runs:
    head = f"MTU {r['mtu']:>5}, loss {r['loss_per_mille'] / 10:3.1f} %"
    if r["kind"] == "lan-raw":
        got = 100 * r["fewest_received"] / max(r["sent"], 1)
        print(f"raw     {head}, {r['datagram_bytes']:>6}-byte datagrams: {r['mbps']:6.1f} MB/s "
              f"({r['ratio']:.2f} of line rate), fewest received {got:.2f} %")
    else:
        b, s = r["backup"], r["restore"]
        print(f"dbs {r['version']} {head}: backup {b['mbps']:6.1f} MB/s ({b['ratio']:.2f}, exit "
              f"{b['exit']}, {b['resends']} resends), restore {s['mbps']:6.1f} MB/s "
              f"({s['ratio']:.2f}, exit {s['exit']}); NACKs {r['nacks']}, repaired "
              f"{r['pieces_repaired']}, ReasmFails {r['reasm_fails']}, RcvbufErrors "
              f"{r['rcvbuf_errors']}, CPU s {r['cpu_backup_s']} / {r['cpu_restore_s']}, "
              f"peak RSS MB {r['peak_rss_mb']}, copies written {r['copies_written_per_chunk']}")
ok = all(r["kind"] == "lan-raw" or (r["backup"]["exit"] == 0 and r["restore"]["exit"] == 0)
         for r in runs)
print(json.dumps({"kind": "dbs-bench-lan", "ok": ok, "runs": runs}))
sys.exit(0 if ok else 1)
PY
exit "$failed"
