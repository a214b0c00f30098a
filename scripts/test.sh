#!/usr/bin/env bash
# test.sh: runs the TestApp client against a peer (course script).
# Usage: scripts/test.sh [testapp options] <peer_ap> BACKUP|RESTORE|DELETE|RECLAIM|STATE|LIST|VERIFY|RECOVER [opnd_1 [opnd_2]]
#   BACKUP <path> <replication_degree> | RESTORE <path> | DELETE <path> | RECLAIM <max_kbytes>
#   | STATE | LIST [path] | VERIFY [path] | RECOVER
# Operation names are case-insensitive and may carry the ENH suffix (BACKUPENH, ...).
# Options (words starting with '-', anywhere: --json, --force, --to DIR, --keep N, --version K,
# --read-data, --help) go to the testapp unchanged, with the value of those that take one; a
# word after "--" is never an option. DBS_TESTAPP names another testapp binary (default: the
# release build, target/release/testapp).
set -euo pipefail
usage() {
    echo "usage: $0 [options] <peer_ap> BACKUP <path> <replication_degree> | RESTORE <path> | DELETE <path> | RECLAIM <max_kbytes> | STATE | LIST [path] | VERIFY [path] | RECOVER" >&2
    if [ -n "${1:-}" ]; then echo "$0: $1" >&2; fi
    exit 2
}
opts=()
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --) shift; args+=("$@"); break ;;
        -h | --help | -V | --testapp-version) opts+=("$1"); args=(); break ;;
        --to | --keep | --version)
            [ "$#" -ge 2 ] || usage "$1 takes a value"
            opts+=("$1" "$2")
            shift
            ;;
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
    STATE | RECOVER) want=0 ;;
    LIST | VERIFY) want="0 or 1" ;;
    *) usage "unknown operation '$2'" ;;
esac
got=$(($# - 2))
case "$want" in
    "0 or 1") [ "$got" -le 1 ] || usage "$op takes $want operand(s), got $got" ;;
    *) [ "$got" -eq "$want" ] || usage "$op takes $want operand(s), got $got" ;;
esac
exec "$bin" "${opts[@]}" -- "$@"
