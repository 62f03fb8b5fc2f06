#!/usr/bin/env bash
# Reload benchmark: what a SIGHUP costs a running daemon. With a config of 64 hooks it measures,
# in one run, (1) how long one reload takes, from the signal to the reload being counted in
# /metrics (parse and validate the file, set up the hooks' signing keys, switch the delivery
# thread and the pipeline), over many reloads in a row; and (2) Context API GETs of one property
# under wrk keep-alive load without reloads (the baseline) and while the daemon reloads every
# 100 ms, as a ratio, with the non-2xx answers and socket errors of both (a reload must not
# close the API). It prints figures and never judges them: exit 0 when everything could be
# measured, 1 when something could not (and it says what), 64 on usage.
#
# Usage: tests/bench/reload_bench.sh BUILD_DIR      (BUILD_DIR holds ./ctxhookd)
# Environment: BENCH_DURATION (seconds per wrk run, default 5), BENCH_RELOADS (sequential
#              reloads timed, default 50), BENCH_HOOKS (hooks in the config, default 64).
set -u -o pipefail

[ $# -eq 1 ] || {
        echo "usage: $0 BUILD_DIR   (BUILD_DIR contains ctxhookd)" >&2
        exit 64
}
build_dir=$(cd "$1" 2>/dev/null && pwd) || {
        echo "reload_bench: no such directory: $1" >&2
        exit 64
}
duration=${BENCH_DURATION:-5}
reloads=${BENCH_RELOADS:-50}
hooks=${BENCH_HOOKS:-64}
account=12345678
ctxhookd=$build_dir/ctxhookd

die() {
        echo "reload_bench: cannot measure: $*" >&2
        exit 1
}
for tool in wrk curl awk; do
        command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
[ -x "$ctxhookd" ] || die "$ctxhookd not found (cmake --build $build_dir --target ctxhookd)"

tmp=$(mktemp -d /tmp/ctxhookd-bench.XXXXXX) || die "mktemp failed"
daemon_pid=
hup_pid=
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
        [ -n "$hup_pid" ] && kill -TERM "$hup_pid" 2>/dev/null
        if [ -n "$daemon_pid" ]; then
                kill -TERM "$daemon_pid" 2>/dev/null
                wait "$daemon_pid" 2>/dev/null
        fi
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

conf=$tmp/ctxhookd.conf
{
        printf '[api]\nlisten = 127.0.0.1:0\n[store]\npath = %s/context.db\n' "$tmp"
        for i in $(seq "$hooks"); do
                printf '[hook "h%d"]\non = conversation.end\nnamespaces = notes\n' "$i"
                printf 'url = http://127.0.0.1:9/h%d\n' "$i"
                printf 'secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n'
        done
} >"$conf"

"$ctxhookd" apikey create --account "$account" -c "$conf" >"$tmp/key.out" 2>"$tmp/key.err" ||
        die "apikey create failed: $(cat "$tmp/key.err")"
key=$(tail -n1 "$tmp/key.out")
"$ctxhookd" run -c "$conf" >/dev/null 2>"$tmp/daemon.err" &
daemon_pid=$!
port=
for _ in $(seq 200); do
        port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$tmp/daemon.err" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.05
done
[ -n "$port" ] || die "ctxhookd did not start: $(tail -n 5 "$tmp/daemon.err")"
base=http://127.0.0.1:$port
url=$base/v1/account/$account/notes/sess1/properties/note
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "maven-api-key: $key" \
        --data-raw '"hello"' "$url") || die "PUT failed"
[ "$code" = 204 ] || die "PUT answered $code"

# applied_reloads -> ctxhookd_config_reloads_total{result="applied"}
applied_reloads() {
        curl -s --max-time 5 "$base/metrics" |
                awk '/^ctxhookd_config_reloads_total\{result="applied"\}/ { print $2 }'
}
now_us() {
        date +%s%6N
}

# ---- (1) one reload at a time ----
times=()
for _ in $(seq "$reloads"); do
        before=$(applied_reloads)
        [ -n "$before" ] || die "no reload counter in /metrics"
        t0=$(now_us)
        kill -HUP "$daemon_pid"
        for _ in $(seq 2000); do
                [ "$(applied_reloads)" -gt "$before" ] && break
                sleep 0.001
        done
        t1=$(now_us)
        [ "$(applied_reloads)" -gt "$before" ] || die "a reload was not applied: $(tail -n 3 "$tmp/daemon.err")"
        times+=($((t1 - t0)))
done
grep -q 'reload refused' "$tmp/daemon.err" && die "a reload was refused: $(grep 'reload refused' "$tmp/daemon.err" | head -n1)"

# ---- (2) GET load without and with reloads every 100 ms ----
run_wrk() {
        timeout $((duration + 20)) wrk -t1 -c64 -d"${duration}s" -H "maven-api-key: $key" "$url" \
                >"$tmp/$1.wrk" 2>&1
}
rps() {
        awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$tmp/$1.wrk"
}
bad() {
        awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$tmp/$1.wrk"
}
# Alternating rounds, best of each: single wrk runs on 2 shared cores scatter by ±15%.
during=0
for round in 1 2; do
        run_wrk "quiet$round" || die "wrk failed: $(cat "$tmp/quiet$round.wrk")"
        during_before=$(applied_reloads)
        (while :; do
                kill -HUP "$daemon_pid" 2>/dev/null || exit 0
                sleep 0.1
        done) &
        hup_pid=$!
        run_wrk "reloading$round" || die "wrk failed: $(cat "$tmp/reloading$round.wrk")"
        kill -TERM "$hup_pid" 2>/dev/null
        wait "$hup_pid" 2>/dev/null
        hup_pid=
        sleep 0.3
        during=$((during + $(applied_reloads) - during_before))
done
best() {
        local a b
        a=$(rps "${1}1")
        b=$(rps "${1}2")
        if [ "${a:-0}" -ge "${b:-0}" ]; then echo "${1}1"; else echo "${1}2"; fi
}
quiet=$(best quiet)
reloading=$(best reloading)
kill -0 "$daemon_pid" 2>/dev/null || die "the daemon died under reloads"

echo "reload_bench: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $hooks hooks"
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$reloads" '
        { t[NR] = $1 }
        END { printf "  one reload (SIGHUP → counted in /metrics), %d in a row: median %.1f ms, p90 %.1f ms, max %.1f ms\n",
                n, t[int((NR + 1) / 2)] / 1000, t[int(NR * 0.9 + 0.5)] / 1000, t[NR] / 1000 }'
printf '  GET one property, wrk -t1 -c64 -d%ss, best of 2 alternating rounds: %s req/s without reloads (rounds %s, %s; non-2xx + socket errors %s)\n' \
        "$duration" "$(rps "$quiet")" "$(rps quiet1)" "$(rps quiet2)" "$(($(bad quiet1) + $(bad quiet2)))"
printf '  the same while reloading every 100 ms (%d reloads applied): %s req/s (rounds %s, %s; non-2xx + socket errors %s)\n' \
        "$during" "$(rps "$reloading")" "$(rps reloading1)" "$(rps reloading2)" "$(($(bad reloading1) + $(bad reloading2)))"
awk -v a="$(rps "$reloading")" -v b="$(rps "$quiet")" 'BEGIN { if (b > 0) printf "  ratio with/without reloads (best vs best): %.1f%%\n", 100 * a / b }'
