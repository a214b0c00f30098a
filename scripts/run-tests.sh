#!/usr/bin/env bash
# run-tests.sh: the project's test command (CI runs it through .ci/run).
#   1. installs the system tools it needs when they are missing (util-linux's unshare,
#      iproute2's ip);
#   2. builds every target of the workspace, fetching crates, on the normal network;
#   3. runs `cargo test --workspace --offline --no-fail-fast` inside a fresh network namespace
#      whose only interface is lo, so that a socket not pinned to loopback fails instead of
#      reaching a LAN.
# Usage: scripts/run-tests.sh [extra cargo test arguments, e.g. -- --nocapture]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'run-tests: %s\n' "$*" >&2
    exit 1
}

# Path of a system tool, also looking in the sbin directories a non-root PATH may lack.
tool() {
    command -v "$1" 2>/dev/null && return
    for dir in /usr/sbin /sbin; do
        if [ -x "$dir/$1" ]; then
            echo "$dir/$1"
            return
        fi
    done
    return 1
}

# 1. System tools.
missing=()
tool unshare >/dev/null || missing+=(util-linux)
tool ip >/dev/null || missing+=(iproute2)
# The multi-host fault tests (tests/faults.rs): nsenter, and nft for packet loss/duplication.
tool nsenter >/dev/null || missing+=(util-linux)
tool nft >/dev/null || missing+=(nftables)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        die "missing ${missing[*]} and not root (no sudo either): install them and run again"
    fi
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}"
fi
unshare="$(tool unshare)" || die "unshare still missing"
ip="$(tool ip)" || die "ip still missing"

# 2. Build (and fetch crates) while the network is still there.
say "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# 3. Test in a private network namespace: as root `unshare -n`, else a user namespace too.
ns=()
for flags in -n -rn; do
    if "$unshare" "$flags" true 2>/dev/null; then
        ns=("$unshare" "$flags")
        break
    fi
done
if [ "${#ns[@]}" -eq 0 ]; then
    die "cannot create a network namespace (tried unshare -n and unshare -rn);" \
        "refusing to run the tests on this host's network. Run as root, or enable" \
        "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)."
fi
say "cargo test --workspace --offline --no-fail-fast${*:+ $*} (in a network namespace: ${ns[*]})"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# shellcheck disable=SC2016 # the inner script expands its own arguments
"${ns[@]}" bash -euo pipefail -c '
    ip="$1"
    shift
    "$ip" link set lo up
    others="$("$ip" -o link show | awk -F": " "\$2 != \"lo\" {print \$2}")"
    if [ -n "$others" ]; then
        echo "run-tests: the test namespace has interfaces besides lo: $others" >&2
        exit 1
    fi
    exec cargo test --workspace --offline --no-fail-fast "$@"
' run-tests "$ip" "$@" 2>&1 | tee "$log"
status="${PIPESTATUS[0]}"
set -e
# One closing line for all the test binaries together.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i - 1); if ($i ~ /^failed;?$/) f += $(i - 1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
