#!/usr/bin/env bash
# Replay benchmark (issue 4): `ctxhookd replay --dry-run` of generated plain events
# ({"kind":"conversation.end",…}, a quarter closed by the agent so that the hook ignores them),
# streamed from a file and from a pipe, with a hook without context and one that gathers a
# namespace from the store. It reports events/s (target ≥ 200 000/s) and the peak RSS of each
# run (/usr/bin/time -v), once with a tenth of the events too, so that a memory figure that
# grows with the log shows (it must not: logs are streamed, never loaded whole). It checks
# that every delivery it expects was printed. Prints figures, never judges them: exit 0 when
# everything could be measured, 1 when not, 64 on usage.
#
# Usage: tests/bench/replay_bench.sh BUILD_DIR     (BUILD_DIR holds ctxhookd)
# Environment: BENCH_EVENTS (default 1000000), TMPDIR (where the log goes, default /tmp;
#              about 140 bytes per event).
set -u -o pipefail

[ $# -eq 1 ] || {
        echo "usage: $0 BUILD_DIR" >&2
        exit 64
}
bin=$(cd "$1" 2>/dev/null && pwd)/ctxhookd
[ -x "$bin" ] || {
        echo "replay_bench: no ctxhookd in $1" >&2
        exit 64
}
events=${BENCH_EVENTS:-1000000}
case $events in '' | *[!0-9]* | 0)
        echo "replay_bench: BENCH_EVENTS must be a positive integer" >&2
        exit 64
        ;;
esac
[ -x /usr/bin/time ] || {
        echo "replay_bench: cannot measure: /usr/bin/time (GNU time) is missing" >&2
        exit 1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ctxhookd-replay-bench-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

# [store] path does not exist: --dry-run then reads context from an empty throwaway store.
write_config() { # $1 file, $2 namespaces line ("" for none)
        cat >"$1" <<EOF
[store]
path = $tmp/none.db
[log]
level = warning
[kafka]
account = 12345678
[hook "ends"]
on = conversation.end
close_reason = SYSTEM,TIMEOUT
$2
url = http://127.0.0.1:9/hook
secret = whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
EOF
}
write_config "$tmp/plain.conf" ""
write_config "$tmp/context.conf" "namespaces = agentNotes"

generate() { # $1 events
        awk -v n="$1" 'BEGIN {
                for (i = 0; i < n; i++)
                        printf "{\"kind\":\"conversation.end\",\"accountId\":\"12345678\"," \
                               "\"conversationId\":\"bench-conv-%d\",\"closeReason\":\"%s\"," \
                               "\"time\":%d}\n", i, (i % 4 == 3 ? "AGENT" : "SYSTEM"),
                               1764400000000 + i
        }'
}

failed=0
# One run: $1 label, $2 config, $3 events, $4 "file" or "pipe". Prints a table row.
run() {
        local label=$1 conf=$2 n=$3 how=$4 want start end ms rss lines rate
        want=$((n - n / 4))
        start=$(date +%s%N)
        if [ "$how" = file ]; then
                /usr/bin/time -v -o "$tmp/time" "$bin" replay -c "$conf" --dry-run \
                        "$tmp/events-$n.jsonl" 2>"$tmp/err" | wc -l >"$tmp/lines"
        else
                generate "$n" | /usr/bin/time -v -o "$tmp/time" "$bin" replay -c "$conf" \
                        --dry-run - 2>"$tmp/err" | wc -l >"$tmp/lines"
        fi
        end=$(date +%s%N)
        ms=$(((end - start) / 1000000))
        lines=$(cat "$tmp/lines")
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tmp/time")
        if [ "$lines" != "$want" ]; then
                echo "replay_bench: $label: $lines deliveries printed, want $want" >&2
                tail -3 "$tmp/err" >&2
                failed=1
        fi
        [ "$ms" -gt 0 ] || ms=1
        rate=$((n * 1000 / ms))
        printf "%-34s %9d %9d %10d %12s\n" "$label" "$n" "$ms" "$rate" "${rss:-?}"
}

small=$((events / 10))
[ "$small" -gt 0 ] || small=1
generate "$events" >"$tmp/events-$events.jsonl"
generate "$small" >"$tmp/events-$small.jsonl"
printf "replay --dry-run, %s (%d CPUs)\n" "$("$bin" --version)" "$(nproc)"
printf "%-34s %9s %9s %10s %12s\n" "run" "events" "ms" "events/s" "peak RSS kB"
run "file, no context" "$tmp/plain.conf" "$small" file
run "file, no context" "$tmp/plain.conf" "$events" file
run "file, context from the store" "$tmp/context.conf" "$events" file
run "pipe from awk, no context" "$tmp/plain.conf" "$events" pipe
echo "(events/s over the wall time of the run, start-up included; target >= 200000)"
exit $failed
