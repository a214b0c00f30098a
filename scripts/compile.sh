#!/usr/bin/env bash
# compile.sh: release build of the whole workspace (binaries in target/release/).
# Usage: scripts/compile.sh   (from any directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo build --release --workspace "$@"
