#!/usr/bin/env bash
# peer.sh: starts a peer (course script).
# Usage: scripts/peer.sh <version> <peer_id> <access_point> <MC_addr> <MC_port> <MDB_addr> <MDB_port> <MDR_addr> <MDR_port>
# Extra peer options (e.g. --dir DIR, --capacity KB, --log-level debug) go in $DBS_PEER_OPTS.
# The peer's tree defaults to ./peer<ID> in the current directory.
set -euo pipefail
if [ "$#" -ne 9 ]; then
    echo "usage: $0 <version> <peer_id> <access_point> <MC_addr> <MC_port> <MDB_addr> <MDB_port> <MDR_addr> <MDR_port>" >&2
    exit 2
fi
bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/peer"
if [ ! -x "$bin" ]; then
    echo "$0: $bin not found: run scripts/compile.sh first" >&2
    exit 1
fi
read -r -a opts <<< "${DBS_PEER_OPTS:-}"
exec "$bin" "${opts[@]}" "$@"
