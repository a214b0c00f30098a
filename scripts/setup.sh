#!/usr/bin/env bash
# setup.sh: creates a peer's tree peer<ID>/{chunks,tmp,restored} in the current directory
# (the peer's default --dir when started from here). Usage: scripts/setup.sh <peer_id>
set -euo pipefail
if [ "$#" -ne 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 <peer_id>   (a positive integer)" >&2
    exit 2
fi
mkdir -p "peer$1/chunks" "peer$1/tmp" "peer$1/restored"
echo "created $PWD/peer$1"
