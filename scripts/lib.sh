# lib.sh: shell helpers shared by demo.sh, bench.sh and soak.sh (sourced, not run).

# only_loopback: true when the current network namespace has no interface but lo.
only_loopback() {
    local names
    names="$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//')" || return 1
    [ -n "$names" ] && [ "$names" = lo ]
}

# reexec_in_private_netns VAR SCRIPT ARGS...: runs SCRIPT ARGS again in a new network namespace
# (`unshare -n`, else `unshare -rn`), with VAR set to the unshare command used; does not
# return if that works. Otherwise returns 1 with the reasons in the array netns_refusals.
reexec_in_private_netns() {
    local var="$1" script="$2" flags err
    shift 2
    netns_refusals=()
    for flags in -n -rn; do
        if err="$(unshare "$flags" true 2>&1)"; then
            export "$var=unshare $flags"
            exec unshare "$flags" bash "$script" "$@"
        fi
        netns_refusals+=("unshare $flags: ${err:-failed}")
    done
    return 1
}

# stop_pids PID...: SIGTERM to every process, then waits up to 10 s for each and SIGKILLs what
# is left. Leaves each one's exit status, in order, in the array stop_statuses (137: killed).
stop_pids() {
    local pid i st
    stop_statuses=()
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        st=0
        wait "$pid" 2>/dev/null || st=$?
        stop_statuses+=("$st")
    done
}
