#!/usr/bin/env bash
# Context API benchmark: measures, in one run on this machine, a bare libmicrohttpd server
# (tests/bench/bare_mhd.c, same thread model as the daemon, fixed JSON body) and ctxhookd
# serving GET of one property, then ctxhookd's PATCH rate and its resident memory. Absolute
# request rates drift between runs and machines, so the figure that matters is the ratio of
# the daemon to the bare server measured seconds apart in the same run; the two are loaded
# alternately, twice, so drift shows. It prints figures and never judges them: exit 0 when
# everything could be measured, 1 when something could not (and it says what), 64 on usage.
#
# Usage: tests/bench/api_bench.sh BUILD_DIR      (BUILD_DIR holds ./ctxhookd and ./bare_mhd)
# Environment: BENCH_DURATION (seconds per wrk run, default 5), BENCH_CONNECTIONS (default 64),
#              BENCH_SESSIONS (session ids the PATCH run rotates over, default 1024),
#              BENCH_VERBOSE=1 (print wrk's full output).
set -u -o pipefail

usage() {
        echo "usage: $0 BUILD_DIR   (BUILD_DIR contains ctxhookd and bare_mhd)" >&2
        exit 64
}
[ $# -eq 1 ] || usage
build_dir=$(cd "$1" 2>/dev/null && pwd) || {
        echo "api_bench: no such directory: $1" >&2
        exit 64
}
script_dir=$(cd "$(dirname "$0")" && pwd)
duration=${BENCH_DURATION:-5}
conns=${BENCH_CONNECTIONS:-64}
sessions=${BENCH_SESSIONS:-1024}
verbose=${BENCH_VERBOSE:-0}
account=12345678
ns=bench
body='"hello world value"'

ctxhookd=$build_dir/ctxhookd
bare=$build_dir/bare_mhd

die() {
        echo "api_bench: cannot measure: $*" >&2
        exit 1
}

for tool in wrk curl awk; do
        command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
[ -x "$bare" ] || die "$bare not found (cmake --build $build_dir --target bare_mhd)"
[ -x "$ctxhookd" ] || die "$ctxhookd not found (cmake --build $build_dir --target ctxhookd)"
[ -r "$script_dir/patch.lua" ] || die "$script_dir/patch.lua not found"

tmp=$(mktemp -d /tmp/ctxhookd-bench.XXXXXX) || die "mktemp failed"
pids=()
wrk_pid=

# Stops what this script started (by pid, TERM then KILL) and removes the temp dir, on every
# exit path.
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
        local pid
        [ -n "$wrk_pid" ] && kill -TERM "$wrk_pid" 2>/dev/null
        for pid in "${pids[@]}"; do
                kill -TERM "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}"; do
                for _ in $(seq 50); do
                        kill -0 "$pid" 2>/dev/null || break
                        sleep 0.1
                done
                kill -KILL "$pid" 2>/dev/null
                wait "$pid" 2>/dev/null
        done
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# rss_kb PID -> VmRSS in kB (empty when the process is gone).
rss_kb() {
        awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}
hwm_kb() {
        awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}
mib() {
        awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f", k / 1024 }'
}

# ---- bare_mhd ----
"$bare" >"$tmp/bare.port" 2>"$tmp/bare.err" &
bare_pid=$!
pids+=("$bare_pid")
for _ in $(seq 100); do
        [ -s "$tmp/bare.port" ] && break
        kill -0 "$bare_pid" 2>/dev/null || break
        sleep 0.05
done
bare_port=$(head -n1 "$tmp/bare.port")
case "$bare_port" in
'' | *[!0-9]*) die "bare_mhd did not start: $(cat "$tmp/bare.err")" ;;
esac
bare_url=http://127.0.0.1:$bare_port/v1/account/$account/$ns/sess1/properties/note

# ---- ctxhookd ----
conf=$tmp/ctxhookd.conf
cat >"$conf" <<EOF
[api]
listen = 127.0.0.1:0
[store]
path = $tmp/context.db
EOF

# The key is made before the daemon starts so that no key cache can stand between the two.
"$ctxhookd" apikey create --account "$account" -c "$conf" >"$tmp/key.out" 2>"$tmp/key.err" ||
        die "ctxhookd apikey create failed: $(cat "$tmp/key.err")"
key=$(tail -n1 "$tmp/key.out")
[ -n "$key" ] || die "ctxhookd apikey create printed no key"

"$ctxhookd" run -c "$conf" >"$tmp/daemon.out" 2>"$tmp/daemon.err" &
daemon_pid=$!
pids+=("$daemon_pid")
daemon_port=
for _ in $(seq 200); do
        daemon_port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$tmp/daemon.err" |
                head -n1)
        [ -n "$daemon_port" ] && break
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.05
done
[ -n "$daemon_port" ] || die "ctxhookd run did not report 'listening on http://…' within 10 s:
$(tail -n 20 "$tmp/daemon.err")"
daemon_base=http://127.0.0.1:$daemon_port
daemon_url=$daemon_base/v1/account/$account/$ns/sess1/properties/note
sleep 0.5 # let the threads settle before reading the idle RSS
rss_start=$(rss_kb "$daemon_pid")
bare_rss=$(rss_kb "$bare_pid")

code=$(curl -s -o "$tmp/put.body" -w '%{http_code}' --max-time 5 -X PUT \
        -H "maven-api-key: $key" -H 'Content-Type: application/json' --data-raw "$body" \
        "$daemon_url") || die "PUT $daemon_url failed (curl)"
[ "$code" = 204 ] || die "PUT $daemon_url answered $code (want 204): $(cat "$tmp/put.body")"
code=$(curl -s -o "$tmp/get.body" -w '%{http_code}' --max-time 5 -H "maven-api-key: $key" \
        "$daemon_url") || die "GET $daemon_url failed (curl)"
[ "$code" = 200 ] || die "GET $daemon_url answered $code (want 200): $(cat "$tmp/get.body")"
[ "$(cat "$tmp/get.body")" = "$body" ] ||
        die "GET $daemon_url returned '$(cat "$tmp/get.body")', want '$body'"

# keepalive CURL-ARGS... -> "yes", or why a client cannot keep the connection open: wrk's
# keep-alive load turns into connection setup and teardown then, which is worth knowing.
keepalive() {
        local hdrs
        hdrs=$(curl -s -D - -o /dev/null --max-time 5 "$@") || {
                echo "unknown (curl failed)"
                return
        }
        if grep -qi '^connection: *close' <<<"$hdrs"; then
                echo "no (every answer carries Connection: close)"
        else
                echo "yes"
        fi
}
bare_keepalive=$(keepalive "$bare_url")
daemon_keepalive=$(keepalive -H "maven-api-key: $key" "$daemon_url")

# run_wrk NAME ARGS... -> runs wrk (bounded), keeps its output in $tmp/NAME.wrk, returns wrk's
# status.
run_wrk() {
        local name=$1
        shift
        # In the background, so that a signal's trap runs at once instead of after wrk.
        timeout $((duration + 20)) wrk -t1 -c"$conns" -d"${duration}s" --latency "$@" \
                >"$tmp/$name.wrk" 2>&1 &
        wrk_pid=$!
        wait "$wrk_pid"
        local rc=$?
        wrk_pid=
        [ "$verbose" = 1 ] && sed 's/^/    | /' "$tmp/$name.wrk"
        return $rc
}
# wrk_field NAME FIELD -> rps | p50 | p99 | non2xx | errors
wrk_field() {
        local f=$tmp/$1.wrk
        case $2 in
        rps) awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f" ;;
        p50) awk '/^ +50%/ { print $2 }' "$f" ;;
        p99) awk '/^ +99%/ { print $2 }' "$f" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$f" ;;
        errors) awk '/Socket errors:/ { gsub(",", ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' "$f" ;;
        esac
}
report_run() {
        printf '  %-22s %8s req/s  p50 %-9s p99 %-9s non-2xx %s  socket errors %s\n' "$2" \
                "$(wrk_field "$1" rps)" "$(wrk_field "$1" p50)" "$(wrk_field "$1" p99)" \
                "$(wrk_field "$1" non2xx)" "$(wrk_field "$1" errors)"
}

# Other load on the machine skews everything, and ratios too when it comes and goes: show it.
loadavg() {
        cut -d' ' -f1-3 /proc/loadavg
}
echo "api_bench: $(nproc) CPUs, load average $(loadavg), wrk -t1 -c$conns -d${duration}s keep-alive"
echo "  bare_mhd pid $bare_pid port $bare_port; ctxhookd pid $daemon_pid port $daemon_port"
echo "  keep-alive: bare_mhd $bare_keepalive; ctxhookd GET $daemon_keepalive"

failed=
best_bare=0
best_get=0
best_bare_run=bare1
best_get_run=get1
for round in 1 2; do
        run_wrk "bare$round" "$bare_url" || die "wrk against bare_mhd failed: $(cat "$tmp/bare$round.wrk")"
        report_run "bare$round" "round $round bare_mhd GET"
        run_wrk "get$round" -H "maven-api-key: $key" "$daemon_url" ||
                die "wrk against ctxhookd failed: $(cat "$tmp/get$round.wrk")"
        report_run "get$round" "round $round ctxhookd GET"
        kill -0 "$daemon_pid" 2>/dev/null || die "ctxhookd died under GET load: $(tail -n 20 "$tmp/daemon.err")"
        r=$(wrk_field "bare$round" rps)
        [ "${r:-0}" -gt "$best_bare" ] && best_bare=$r best_bare_run=bare$round
        r=$(wrk_field "get$round" rps)
        [ "${r:-0}" -gt "$best_get" ] && best_get=$r best_get_run=get$round
        n=$(wrk_field "get$round" non2xx)
        [ "$n" -eq 0 ] || failed="$failed GET round $round: $n non-2xx responses;"
done

run_wrk patch -H "maven-api-key: $key" -s "$script_dir/patch.lua" "$daemon_base" -- \
        "$account" "$ns" "$sessions" || die "wrk PATCH failed: $(cat "$tmp/patch.wrk")"
report_run patch "ctxhookd PATCH"
patch_statuses=$(grep '^patch statuses:' "$tmp/patch.wrk")
echo "  $patch_statuses"
kill -0 "$daemon_pid" 2>/dev/null || die "ctxhookd died under PATCH load: $(tail -n 20 "$tmp/daemon.err")"
patch_other=$(sed -n 's/.*other=\([0-9]*\).*/\1/p' <<<"$patch_statuses")
[ "${patch_other:-1}" -eq 0 ] || failed="$failed PATCH: ${patch_other:-?} responses were not 204 ($patch_statuses);"
patch_rps=$(wrk_field patch rps)

sleep 1 # let in-flight work drain before reading RSS after load
rss_after=$(rss_kb "$daemon_pid")
rss_peak=$(hwm_kb "$daemon_pid")

ratio=$(awk -v d="$best_get" -v b="$best_bare" 'BEGIN { if (b > 0) printf "%.1f", 100 * d / b; else print "n/a" }')
round_ratios=$(for round in 1 2; do
        awk -v d="$(wrk_field "get$round" rps)" -v b="$(wrk_field "bare$round" rps)" \
                'BEGIN { if (b > 0) printf "%.1f%% ", 100 * d / b }'
done)
round_ratios=${round_ratios% }

echo
echo "=== Context API benchmark (best of 2 alternating rounds; wrk -t1 -c$conns -d${duration}s) ==="
printf '  %-20s %8s req/s\n' "bare_mhd GET" "$best_bare"
printf '  %-20s %8s / %s  (best bare_mhd run)\n' "bare_mhd p50/p99" \
        "$(wrk_field "$best_bare_run" p50)" "$(wrk_field "$best_bare_run" p99)"
printf '  %-20s %8s req/s  (%s%% of bare; target >= 80%%; per round: %s)\n' "ctxhookd GET prop" \
        "$best_get" "$ratio" "$round_ratios"
printf '  %-20s %8s / %s  (best ctxhookd GET run)\n' "ctxhookd GET p50/p99" \
        "$(wrk_field "$best_get_run" p50)" "$(wrk_field "$best_get_run" p99)"
[ "$daemon_keepalive" = yes ] ||
        printf '  %-20s %s\n' "" "ctxhookd keep-alive: $daemon_keepalive"
printf '  %-20s %8s req/s  (target >= 20000; %s)\n' "ctxhookd PATCH" "$patch_rps" \
        "${patch_statuses#patch statuses: }"
printf '  %-20s %8s MiB     (target < 30 MB; bare_mhd %s MiB)\n' "ctxhookd RSS idle" \
        "$(mib "$rss_start")" "$(mib "$bare_rss")"
printf '  %-20s %8s MiB     (peak VmHWM %s MiB)\n' "ctxhookd RSS after" "$(mib "$rss_after")" \
        "$(mib "$rss_peak")"

echo "  (load average now $(loadavg); 1 MiB = 1024 kB of VmRSS)"

if [ -n "$failed" ]; then
        echo "api_bench: figures are not valid:$failed" >&2
        exit 1
fi
exit 0
