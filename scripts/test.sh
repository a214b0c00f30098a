#!/usr/bin/env bash
# test.sh: runs the TestApp client against a peer (course script).
# Usage: scripts/test.sh <peer_ap> BACKUP|RESTORE|DELETE|RECLAIM|STATE [opnd_1 [opnd_2]]
#   BACKUP <file> <replication_degree> | RESTORE <file> | DELETE <file> | RECLAIM <max_kbytes> | STATE
# Operation names are case-insensitive and may carry the ENH suffix (BACKUPENH, ...).
set -euo pipefail
usage() {
    echo "usage: $0 <peer_ap> BACKUP <file> <replication_degree> | RESTORE <file> | DELETE <file> | RECLAIM <max_kbytes> | STATE" >&2
    if [ -n "${1:-}" ]; then echo "$0: $1" >&2; fi
    exit 2
}
[ "$#" -ge 2 ] || usage "expected an access point and an operation"
op="$(printf '%s' "$2" | tr '[:lower:]' '[:upper:]')"
case "$op" in
    BACKUP | BACKUPENH) want=2 ;;
    RESTORE | RESTOREENH | DELETE | DELETEENH | RECLAIM | RECLAIMENH) want=1 ;;
    STATE) want=0 ;;
    *) usage "unknown operation '$2'" ;;
esac
[ "$(($# - 2))" -eq "$want" ] || usage "$op takes $want operand(s), got $(($# - 2))"
bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/testapp"
if [ ! -x "$bin" ]; then
    echo "$0: $bin not found: run scripts/compile.sh first" >&2
    exit 1
fi
exec "$bin" "$@"
