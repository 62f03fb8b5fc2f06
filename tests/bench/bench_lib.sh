# Helpers the benchmark scripts share (bash; sourced, not run). The caller defines die(), sets
# `verbose` (1: say() prints) and keeps the pids it stops at exit in the array `pids`.

now() {
        echo "$EPOCHREALTIME"
}

calc() { # EXPR VAR=VALUE...: awk's BEGIN { EXPR } with those variables
        local expr=$1
        shift
        local args=()
        for a in "$@"; do
                args+=(-v "$a")
        done
        awk "${args[@]}" "BEGIN { $expr }"
}

loadavg() {
        cut -d' ' -f1-3 /proc/loadavg
}

# shellcheck disable=SC2154 # verbose: set by the caller
say() {
        [ "$verbose" = 1 ] && echo "  . $*"
        return 0
}

# FILE PID NAME: the first line FILE gets (a program's address), waiting up to 10 s while PID
# runs; dies naming NAME and quoting the .err file beside FILE when none comes.
first_line() {
        local line=
        for _ in $(seq 200); do
                line=$(head -n1 "$1" 2>/dev/null)
                [ -n "$line" ] && break
                kill -0 "$2" 2>/dev/null || break
                sleep 0.05
        done
        [ -n "$line" ] || die "$3 did not start: $(cat "${1%.*}.err" 2>/dev/null)"
        echo "$line"
}

# PID: no longer stopped at exit.
forget() {
        local p keep=()
        for p in "${pids[@]}"; do
                [ "$p" = "$1" ] || keep+=("$p")
        done
        pids=("${keep[@]}")
}

# PID: TERM, up to 10 s, then KILL; forgotten.
stop() {
        local pid=$1
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        forget "$pid"
}
