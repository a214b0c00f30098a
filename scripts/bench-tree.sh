#!/usr/bin/env bash
# bench-tree.sh: small files as one tree, in a private network namespace (loopback only,
# multicast groups 239.78.x.x, interface 127.0.0.1). Builds the release binaries, starts
# BENCH_PEERS (4) peers of protocol BENCH_VERSION (1.0), writes BENCH_FILES (1000) random files
# of BENCH_BYTES (10000) bytes in 10 directories, and from peer 1 times, as one operation each:
# BACKUP of the tree at degree BENCH_DEGREE (2), a second BACKUP (every file unchanged), RESTORE
# of the tree to another directory (compared with the original, modes and mtimes included),
# VERIFY (2.0 only) and DELETE of the tree. Prints one line per step (seconds, files/s) and
# then one JSON line. The issue's targets (4 peers, degree 2, 1,000 files of 10 KB): backup and
# restore <= 10 s, delete <= 5 s.
# Usage: scripts/bench-tree.sh      BENCH_VERSION=2.0 BENCH_FILES=5000 scripts/bench-tree.sh
# Exit status: 0 every step succeeded, 1 a step failed or the restore differs, 3 no private
# network namespace. The peers get SIGTERM on every exit path; the temporary directory goes.
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(dirname "$(dirname "$self")")"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

PEERS="${BENCH_PEERS:-4}"
FILES="${BENCH_FILES:-1000}"
BYTES="${BENCH_BYTES:-10000}"
DEGREE="${BENCH_DEGREE:-2}"
VERSION="${BENCH_VERSION:-1.0}"

if [ -z "${DBS_BENCH_NETNS:-}" ]; then
    "$root/scripts/compile.sh" >&2
    reexec_in_private_netns DBS_BENCH_NETNS "$self" "$@" || true
    echo "bench-tree: cannot create a private network namespace: ${netns_refusals[*]}" >&2
    exit 3
fi
ip link set lo up

peer="$root/target/release/peer"
testapp="$root/target/release/testapp"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/dbs-bench-tree.XXXXXX")"
export DBS_RUNTIME_DIR="$tmp/run"
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pids "${pids[@]}"
    rm -rf -- "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((id = 1; id <= PEERS; id++)); do
    "$peer" "$VERSION" "$id" "tp$id" 239.78.0.1 8101 239.78.0.2 8102 239.78.0.3 8103 \
        --dir "$tmp/peer$id" >"$tmp/peer$id.log" 2>&1 &
    pids+=("$!")
done
deadline=$((SECONDS + 30))
for ((id = 1; id <= PEERS; id++)); do
    until "$testapp" "tp$id" STATE >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench-tree: peer $id did not start" >&2; exit 1; }
        sleep 0.1
    done
done

src="$tmp/files/tree"
for ((i = 0; i < FILES; i++)); do
    mkdir -p "$src/d$((i % 10))"
    head -c "$BYTES" /dev/urandom >"$src/d$((i % 10))/f$i"
done

failed=0
json="{\"peers\":$PEERS,\"version\":\"$VERSION\",\"files\":$FILES,\"bytes\":$BYTES,\"degree\":$DEGREE"
# step NAME ARGS...: runs testapp on peer 1 and reports its time.
step() {
    local name="$1" start end secs rc=0
    shift
    start=$(date +%s.%N)
    "$testapp" --json tp1 "$@" >"$tmp/$name.out" 2>&1 || rc=$?
    end=$(date +%s.%N)
    secs=$(echo "$end - $start" | bc)
    printf '%-10s %7.2f s  %8.0f files/s  exit %d\n' "$name" "$secs" "$(echo "$FILES / $secs" | bc -l)" "$rc"
    json="$json,\"${name}_s\":$secs"
    if [ "$rc" -ne 0 ]; then
        failed=1
        head -c 400 "$tmp/$name.out" >&2
        echo >&2
    fi
}
echo "$PEERS peers ($VERSION), $FILES files of $BYTES bytes, degree $DEGREE"
step backup BACKUP "$src" "$DEGREE"
step unchanged BACKUP "$src" "$DEGREE"
step restore RESTORE "$src" --to "$tmp/out"
if ! diff -r "$src" "$tmp/out/tree" >/dev/null; then
    echo "bench-tree: the restored tree differs" >&2
    failed=1
fi
# attrs DIR: each file's path, mode and mtime.
attrs() { (cd "$1" && find . -type f -printf '%P %m %T@\n' | sort); }
if [ "$(attrs "$src")" != "$(attrs "$tmp/out/tree")" ]; then
    echo "bench-tree: the restored files' modes or mtimes differ" >&2
    failed=1
fi
if [ "$VERSION" != 1.0 ]; then step verify VERIFY "$src"; fi
step delete DELETE "$src"
echo "$json,\"ok\":$([ "$failed" -eq 0 ] && echo true || echo false)}"
exit "$failed"
