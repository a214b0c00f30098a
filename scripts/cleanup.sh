#!/usr/bin/env bash
# cleanup.sh: removes a peer's tree peer<ID>/ from the current directory, or every peer<N>/
# tree there when no id is given. Usage: scripts/cleanup.sh [<peer_id>]
set -euo pipefail
if [ "$#" -gt 1 ] || { [ "$#" -eq 1 ] && ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; }; then
    echo "usage: $0 [<peer_id>]   (a positive integer; none removes every peer<N>/ here)" >&2
    exit 2
fi
if [ "$#" -eq 1 ]; then
    trees=("peer$1")
else
    shopt -s nullglob
    trees=()
    for d in peer[0-9]*/; do
        if [[ "${d%/}" =~ ^peer[0-9]+$ ]]; then trees+=("${d%/}"); fi
    done
fi
for t in "${trees[@]}"; do
    if [ -d "$t" ]; then
        rm -rf -- "$t"
        echo "removed $PWD/$t"
    fi
done
