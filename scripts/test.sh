#!/usr/bin/env bash
# test.sh: runs the TestApp client against a peer (course script).
# Usage: scripts/test.sh [testapp options] <peer_ap> BACKUP|RESTORE|DELETE|RECLAIM|STATE [opnd_1 [opnd_2]]
#   BACKUP <file> <replication_degree> | RESTORE <file> | DELETE <file> | RECLAIM <max_kbytes> | STATE
# Operation names are case-insensitive and may carry the ENH suffix (BACKUPENH, ...).
# Options (words starting with '-', anywhere: --json, --help) go to the testapp unchanged; a
# word after "--" is never an option. DBS_TESTAPP names another testapp binary (default: the
# release build, target/release/testapp).
set -euo pipefail
usage() {
    echo "usage: $0 [--json] <peer_ap> BACKUP <file> <replication_degree> | RESTORE <file> | DELETE <file> | RECLAIM <max_kbytes> | STATE" >&2
    if [ -n "${1:-}" ]; then echo "$0: $1" >&2; fi
    exit 2
}
opts=()
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --) shift; args+=("$@"); break ;;
        -h | --help | -V | --version) opts+=("$1"); args=(); break ;;
        -?*) opts+=("$1") ;;
        *) args+=("$1") ;;
    esac
    shift
done
set -- "${args[@]}"
bin="${DBS_TESTAPP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/testapp}"
if [ ! -x "$bin" ]; then
    echo "$0: $bin not found: run scripts/compile.sh first" >&2
    exit 1
fi
if [ "${#args[@]}" -eq 0 ] && [ "${#opts[@]}" -gt 0 ]; then exec "$bin" "${opts[@]}"; fi
[ "$#" -ge 2 ] || usage "expected an access point and an operation"
op="$(printf '%s' "$2" | tr '[:lower:]' '[:upper:]')"
case "$op" in
    BACKUP | BACKUPENH) want=2 ;;
    RESTORE | RESTOREENH | DELETE | DELETEENH | RECLAIM | RECLAIMENH) want=1 ;;
    STATE) want=0 ;;
    *) usage "unknown operation '$2'" ;;
esac
[ "$(($# - 2))" -eq "$want" ] || usage "$op takes $want operand(s), got $(($# - 2))"
exec "$bin" "${opts[@]}" -- "$@"
