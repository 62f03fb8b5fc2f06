#!/usr/bin/env bash
# Event pipeline benchmark (issue 3). In one run on this machine it measures: a plain librdkafka
# consumer reading a topic of librdkafka's mock cluster (tests/bench/bare_consumer.c; the
# baseline, once with the daemon's consumer settings and once with librdkafka's queue
# defaults); ctxhookd turning the same topic into queued deliveries (Kafka → outbox), with the
# deliveries held back and with the webhook's port closed; ctxhookd draining that backlog into
# tests/tools/webhook_sink (and the sink's own capacity under wrk); the event → webhook latency
# at a paced event rate (kafka_produce.c --rate), with fetch.wait.max.ms as configured and at
# 5 ms, next to the bare consumer's latency in the same run; and the daemon's peak memory in
# each run. It prints figures and never judges them: exit 0 when everything could be measured,
# 1 when something could not (and it says what), 64 on usage. About 75 s with the defaults.
#
# Usage: tests/bench/pipeline_bench.sh BUILD_DIR
#        (BUILD_DIR holds ctxhookd, mock_kafka, webhook_sink, bare_consumer, kafka_produce)
# Environment: BENCH_EVENTS (events in the topic, default 200000), BENCH_PARTITIONS (default
#              16), BENCH_SIZE (bytes per event, default 300), BENCH_DOWN_EVENTS (events of the
#              closed-port run, default 50000), BENCH_DELIVERIES (webhooks of the delivery run,
#              default 20000), BENCH_RATE (events/s of the latency runs, default 2000),
#              BENCH_RATE_SECONDS (default 5), BENCH_KAFKA_EXTRA (librdkafka properties for
#              [kafka] of the two ingest runs, "key = value; key = value"), BENCH_VERBOSE=1,
#              TMPDIR (where the databases go, default /tmp).
set -u -o pipefail
# shellcheck source=tests/bench/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"

usage() {
        echo "usage: $0 BUILD_DIR   (BUILD_DIR contains ctxhookd, mock_kafka, webhook_sink," \
                "bare_consumer, kafka_produce)" >&2
        exit 64
}
[ $# -eq 1 ] || usage
build_dir=$(cd "$1" 2>/dev/null && pwd) || {
        echo "pipeline_bench: no such directory: $1" >&2
        exit 64
}
events=${BENCH_EVENTS:-200000}
partitions=${BENCH_PARTITIONS:-16}
size=${BENCH_SIZE:-300}
down_events=${BENCH_DOWN_EVENTS:-50000}
deliveries=${BENCH_DELIVERIES:-20000}
rate=${BENCH_RATE:-2000}
rate_seconds=${BENCH_RATE_SECONDS:-5}
kafka_extra=${BENCH_KAFKA_EXTRA:-}
verbose=${BENCH_VERBOSE:-0}
topic=conversation-events
secret=whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
# Time limits of the phases (seconds): together well under 3 minutes. A phase that runs out
# reports what it reached, marked partial.
limit_bare=40
limit_ingest=60
limit_down=25
limit_deliver=20
limit_latency=20

die() {
        echo "pipeline_bench: cannot measure: $*" >&2
        exit 1
}

for v in events partitions size down_events deliveries rate rate_seconds; do
        case ${!v} in
        '' | *[!0-9]* | 0) die "$v must be a positive integer, not '${!v}'" ;;
        esac
done
[ "$down_events" -le "$events" ] || down_events=$events
[ "$deliveries" -le "$events" ] || deliveries=$events
for tool in curl awk sort; do
        command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
for prog in ctxhookd mock_kafka webhook_sink bare_consumer kafka_produce; do
        [ -x "$build_dir/$prog" ] || die "$build_dir/$prog not found (cmake --build $1 --target $prog)"
done
ctxhookd=$build_dir/ctxhookd

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ctxhookd-pipeline-bench.XXXXXX") || die "mktemp failed"
pids=()     # stopped with TERM (then KILL) on exit
kill_pids=() # stopped with KILL at once: a sink whose handler sleeps cannot stop in time

# Stops what this script started, by pid, and removes the temp dir, on every exit path.
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
        local pid
        for pid in "${kill_pids[@]}"; do
                kill -KILL "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}"; do
                kill -TERM "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}" "${kill_pids[@]}"; do
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

# calc EXPR VAR=VALUE... -> awk arithmetic
mib() {
        awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f", k / 1024 }'
}
hwm_kb() {
        awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}
# anon_kb PID -> RssAnon in kB: the daemon's own heap, without file pages (VmHWM counts those
# too, mostly SQLite's memory-mapped database, mmap_size = 64 MiB, shared with the page cache).
anon_kb() {
        awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}
# cpu_ticks PID -> user + system clock ticks used so far
cpu_ticks() {
        awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null
}
hz=$(getconf CLK_TCK)

# stop PID: TERM, wait up to 10 s, then KILL; drops it from pids.

# first_line FILE PID WHAT -> the first line of FILE once PID has written it (10 s at most).

# start_mock NAME -> starts a mock cluster with the topic; sets mock_pid, mock_addr.
start_mock() {
        "$build_dir/mock_kafka" --topic "$topic" --partitions "$partitions" \
                >"$tmp/$1.out" 2>"$tmp/$1.err" &
        mock_pid=$!
        pids+=("$mock_pid")
        mock_addr=$(first_line "$tmp/$1.out" "$mock_pid" "mock_kafka") || exit 1
}

# start_sink NAME ARGS... -> a webhook_sink; sets sink_pid, sink_port.
start_sink() {
        local name=$1
        shift
        "$build_dir/webhook_sink" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
        sink_pid=$!
        sink_port=$(first_line "$tmp/$name.out" "$sink_pid" "webhook_sink") || exit 1
        case $sink_port in
        '' | *[!0-9]*) die "webhook_sink printed '$sink_port' instead of its port" ;;
        esac
}

# start_daemon NAME DB BROKERS GROUP URL MAX_IN_FLIGHT [KAFKA_EXTRA] -> daemon_pid, daemon_port,
# t_launch (when it was started).
start_daemon() {
        local name=$1 db=$2 brokers=$3 group=$4 url=$5 inflight=$6 extra=${7:-}
        local conf=$tmp/$name.conf
        {
                echo "[api]"
                echo "listen = 127.0.0.1:0"
                echo "[store]"
                echo "path = $db"
                echo "[log]"
                echo "level = notice"
                echo "[kafka]"
                echo "brokers = $brokers"
                echo "topic = $topic"
                echo "group = $group"
                [ -n "$extra" ] && tr ';' '\n' <<<"$extra"
                echo "[delivery]"
                echo "max_in_flight = $inflight"
                # Back-pressure must not pause consumption, and a failed call must not come
                # back within the run.
                echo "outbox_max = 100000000"
                echo "retry_base_ms = 3600000"
                echo "retry_max_ms = 86400000"
                echo "[hook \"bench\"]"
                echo "on = conversation.end"
                echo "url = $url"
                echo "secret = $secret"
                echo "timeout_ms = 300000"
        } >"$conf"
        t_launch=$(now)
        "$ctxhookd" run -c "$conf" >"$tmp/$name.out" 2>"$tmp/$name.err" &
        daemon_pid=$!
        pids+=("$daemon_pid")
        daemon_port=
        for _ in $(seq 200); do
                daemon_port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' \
                        "$tmp/$name.err" | head -n1)
                [ -n "$daemon_port" ] && break
                kill -0 "$daemon_pid" 2>/dev/null || break
                sleep 0.05
        done
        [ -n "$daemon_port" ] || die "ctxhookd ($name) did not report 'listening on http://…':
$(tail -n 20 "$tmp/$name.err")"
        say "$name: ctxhookd pid $daemon_pid port $daemon_port"
}

# metric PORT NAME -> the value of the sample NAME (e.g. ctxhookd_events_total{result="queued"}).
metric() {
        curl -s --max-time 2 "http://127.0.0.1:$1/metrics" |
                awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}

# wait_metric NAME TARGET LIMIT_S: polls the daemon's metric NAME every 0.1 s until it reaches
# TARGET or LIMIT_S seconds since t_launch pass. Sets t_first/c_first (first poll with a value
# above 0), t_last/c_last (the last poll), cpu_first/cpu_last and mock_cpu_first/mock_cpu_last
# (clock ticks of the daemon and of the mock cluster at those polls), partial (1 on timeout),
# anon_peak (the largest RssAnon of the daemon seen at a poll, kB).
wait_metric() {
        local name=$1 target=$2 limit=$3 c t a
        t_first='' c_first=0 partial=0 anon_peak=0
        while :; do
                c=$(metric "$daemon_port" "$name")
                t=$(now)
                a=$(anon_kb "$daemon_pid")
                [ "${a:-0}" -gt "$anon_peak" ] && anon_peak=$a
                if [ -z "$t_first" ] && [ "${c:-0}" -gt 0 ]; then
                        t_first=$t c_first=$c
                        cpu_first=$(cpu_ticks "$daemon_pid")
                        mock_cpu_first=$(cpu_ticks "$mock_pid")
                fi
                t_last=$t c_last=${c:-0}
                [ "$c_last" -ge "$target" ] && break
                kill -0 "$daemon_pid" 2>/dev/null || die "ctxhookd died: $(tail -n 20 "$tmp"/*.err)"
                if [ "$(calc 'print (t - s >= l)' t="$t" s="$t_launch" l="$limit")" = 1 ]; then
                        partial=1
                        break
                fi
                sleep 0.1
        done
        cpu_last=$(cpu_ticks "$daemon_pid")
        mock_cpu_last=$(cpu_ticks "$mock_pid")
        [ -n "$t_first" ] || t_first=$t_last cpu_first=$cpu_last mock_cpu_first=$mock_cpu_last
}

# Figures of the last wait_metric: steady rate (first value above 0 → last poll), rate from the
# daemon's start, CPU of the daemon and of the mock cluster over the steady part (1.00 = a core).
steady_rate() {
        calc 'd = b - a; if (d > 0) printf "%.0f", (cl - cf) / d; else print "n/a"' \
                a="$t_first" b="$t_last" cf="$c_first" cl="$c_last"
}
start_rate() {
        calc 'd = b - a; if (d > 0) printf "%.0f", c / d; else print "n/a"' \
                a="$t_launch" b="$t_last" c="$c_last"
}
cpu_share() { # TICKS_FIRST TICKS_LAST
        calc 'd = b - a; if (d > 0) printf "%.2f", (y - x) / hz / d; else print "n/a"' \
                a="$t_first" b="$t_last" x="$1" y="$2" hz="$hz"
}
seconds() {
        calc 'printf "%.2f", b - a' a="$1" b="$2"
}
partial_note() {
        [ "$partial" = 1 ] && echo " PARTIAL: reached $c_last of $1 in the time limit"
}

echo "pipeline_bench: $(nproc) CPUs, load average $(loadavg); the mock Kafka cluster, ctxhookd," \
        "the load generators and the sinks share these CPUs (that is part of every figure)"
echo "  $events events of $size bytes in $partitions partitions; topic $topic"

# ---- the topic ----
start_mock mock1
say "mock cluster pid $mock_pid at $mock_addr"
"$build_dir/kafka_produce" -b "$mock_addr" -t "$topic" -n "$events" --size "$size" \
        >"$tmp/produce.out" 2>"$tmp/produce.err" ||
        die "kafka_produce failed: $(cat "$tmp/produce.out" "$tmp/produce.err")"
produce=$(cat "$tmp/produce.out")
say "$produce"
low=$(sed -n 's/.* low=\([0-9]*\).*/\1/p' <<<"$produce")
high=$(sed -n 's/.* high=\([0-9]*\).*/\1/p' <<<"$produce")
if [ "$low" != 0 ] || [ "$high" != "$events" ]; then
        die "the mock cluster kept offsets $low..$high of $events events (it drops the oldest" \
                "beyond about 5 MB per partition): raise BENCH_PARTITIONS or lower BENCH_EVENTS"
fi
echo "  produced: $produce"

# ---- 1. baselines: bare consumers ----
# bare NAME ARGS... -> runs bare_consumer in its own group, prints its result line.
bare() {
        local name=$1
        shift
        timeout $((limit_bare + 10)) "$build_dir/bare_consumer" -b "$mock_addr" -t "$topic" \
                -g "$name" -n "$events" --timeout "$limit_bare" "$@" \
                >"$tmp/$name.out" 2>"$tmp/$name.err" ||
                die "bare_consumer $* failed: $(cat "$tmp/$name.err")"
        grep '^consumed=' "$tmp/$name.out"
}
field() { # LINE KEY
        sed -n "s/.*\\b$2=\\([^ ]*\\).*/\\1/p" <<<"$1"
}
bare_daemon=$(bare bare-daemon-settings) || exit 1
echo "  bare consumer (daemon's settings):  $bare_daemon"
bare_default=$(bare bare-default-queue -X queued.min.messages=100000 \
        -X queued.max.messages.kbytes=65536) || exit 1
echo "  bare consumer (librdkafka queue defaults): $bare_default"

# ---- 2. ingest: Kafka → outbox ----
# Deliveries held back: one call in flight to a sink that sleeps 10 minutes before answering,
# and max_in_flight = 1, so the delivery thread claims nothing more and the run measures the
# consumer thread alone.
start_sink stalled --out /dev/null --delay-ms 600000
stalled_pid=$sink_pid
kill_pids+=("$stalled_pid")
start_daemon ingest "$tmp/ingest.db" "$mock_addr" ingest "http://127.0.0.1:$sink_port/hook" 1 \
        "$kafka_extra"
ingest_pid=$daemon_pid
wait_metric 'ctxhookd_events_total{result="queued"}' "$events" "$limit_ingest"
ingest_rate=$(steady_rate)
ingest_start_rate=$(start_rate)
ingest_join=$(seconds "$t_launch" "$t_first")
ingest_cpu=$(cpu_share "$cpu_first" "$cpu_last")
ingest_mock_cpu=$(cpu_share "$mock_cpu_first" "$mock_cpu_last")
ingest_partial=$(partial_note "$events")
ingest_hwm=$(hwm_kb "$ingest_pid")
ingest_anon=$anon_peak
ingest_n=$c_last
echo "  ingest, deliveries held: $ingest_n events queued; ${ingest_rate}/s from the first" \
        "(${ingest_join} s after start), ${ingest_start_rate}/s from start;" \
        "CPU: ctxhookd $ingest_cpu, mock cluster $ingest_mock_cpu${ingest_partial};" \
        "VmHWM $(mib "$ingest_hwm") MiB, largest RssAnon $(mib "$ingest_anon") MiB"
# The stalled call fails at once when its sink goes, so the daemon stops without waiting for it
# (that one delivery is rescheduled an hour later).
kill -KILL "$stalled_pid" 2>/dev/null
wait "$stalled_pid" 2>/dev/null
stop "$ingest_pid"

# With the webhook's port closed, every delivery is tried once (connection refused) and
# rescheduled: the delivery thread writes to the store as often as the consumer does.
closed_port=$(
        start_sink closed --out /dev/null
        kill -KILL "$sink_pid"
        wait "$sink_pid" 2>/dev/null
        echo "$sink_port"
)
start_daemon down "$tmp/down.db" "$mock_addr" down "http://127.0.0.1:$closed_port/hook" 64 \
        "$kafka_extra"
down_pid=$daemon_pid
wait_metric 'ctxhookd_events_total{result="queued"}' "$down_events" "$limit_down"
down_rate=$(steady_rate)
down_cpu=$(cpu_share "$cpu_first" "$cpu_last")
down_partial=$(partial_note "$down_events")
down_retries=$(metric "$daemon_port" 'ctxhookd_deliveries_total{hook="bench",result="retry"}')
down_hwm=$(hwm_kb "$down_pid")
down_anon=$anon_peak
echo "  ingest, webhook port closed: $c_last events queued, ${down_rate}/s from the first;" \
        "$down_retries failed attempts rescheduled meanwhile; CPU: ctxhookd $down_cpu${down_partial}"
stop "$down_pid"
stop "$mock_pid"

# ---- 3. delivery: the held-back backlog into a sink ----
start_sink sink --out /dev/null
sink_fast_pid=$sink_pid
pids+=("$sink_fast_pid")
sink_url=http://127.0.0.1:$sink_port/hook
# The sink alone under the same kind of load (64 keep-alive connections POSTing a webhook-sized
# body), if wrk is there: what the sink can take at most on this machine.
sink_capacity=n/a
if command -v wrk >/dev/null; then
        body=$(printf '{"timestamp":1,"headers":[],"payload":{"hook":"bench","event":{"id":"kafka:%s/0/1","kind":"conversation.end","accountId":"12345678","conversationId":"c-1","closeReason":"SYSTEM","time":1},"raw":{"kind":"conversation.end","accountId":"12345678","conversationId":"c-1","closeReason":"SYSTEM","time":1,"pad":"%s"},"context":{}}}' \
                "$topic" "$(head -c $((size > 130 ? size - 130 : 1)) /dev/zero | tr '\0' x)")
        cat >"$tmp/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$body]]
EOF
        timeout 20 wrk -t1 -c64 -d3s -s "$tmp/post.lua" "$sink_url" >"$tmp/sink.wrk" 2>&1 &&
                sink_capacity=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$tmp/sink.wrk")
        [ "$verbose" = 1 ] && sed 's/^/    | /' "$tmp/sink.wrk"
fi
echo "  webhook_sink alone (wrk -t1 -c64 -d3s POST): ${sink_capacity} req/s"

[ "$ingest_n" -ge "$deliveries" ] ||
        die "the ingest run queued only $ingest_n deliveries, fewer than BENCH_DELIVERIES=$deliveries"
sink_ticks0=$(cpu_ticks "$sink_fast_pid")
start_daemon deliver "$tmp/ingest.db" "" unused "$sink_url" 64
deliver_pid=$daemon_pid
wait_metric 'ctxhookd_deliveries_total{hook="bench",result="delivered"}' "$deliveries" \
        "$limit_deliver"
deliver_rate=$(steady_rate)
deliver_start_rate=$(start_rate)
deliver_cpu=$(cpu_share "$cpu_first" "$cpu_last")
deliver_sink_cpu=$(calc 'd = b - a; if (d > 0) printf "%.2f", (y - x) / hz / d; else print "n/a"' \
        a="$t_launch" b="$t_last" x="$sink_ticks0" y="$(cpu_ticks "$sink_fast_pid")" hz="$hz")
deliver_partial=$(partial_note "$deliveries")
deliver_n=$c_last
deliver_other=$(($(metric "$daemon_port" 'ctxhookd_deliveries_total{hook="bench",result="retry"}') +
        $(metric "$daemon_port" 'ctxhookd_deliveries_total{hook="bench",result="dead"}')))
deliver_hwm=$(hwm_kb "$deliver_pid")
deliver_anon=$anon_peak
echo "  delivery from a backlog of $ingest_n: $deliver_n delivered, ${deliver_rate}/s from the" \
        "first, ${deliver_start_rate}/s from start; not delivered (retry, dead) $deliver_other;" \
        "CPU: ctxhookd $deliver_cpu, sink $deliver_sink_cpu${deliver_partial};" \
        "VmHWM $(mib "$deliver_hwm") MiB, largest RssAnon $(mib "$deliver_anon") MiB"
stop "$deliver_pid"
stop "$sink_fast_pid"

# ---- 4. latency at a paced rate ----
paced=$((rate * rate_seconds))
# latency_run NAME FETCH_WAIT_MS: a fresh topic, ctxhookd with a hook to a recording sink and a
# bare consumer (both with fetch.wait.max.ms = FETCH_WAIT_MS, or librdkafka's default when
# empty), then `paced` events at `rate`/s. Sets lat[NAME.n|p50|p99|max|hwm|bare|note].
latency_run() {
        local name=$1 wait_ms=$2 extra='' bare_x=() code ready lat_pid sink bare_pid other n
        if [ -n "$wait_ms" ]; then
                extra="fetch.wait.max.ms = $wait_ms"
                bare_x=(-X "fetch.wait.max.ms=$wait_ms")
        fi
        start_mock "mock-$name"
        start_sink "sink-$name" --out "$tmp/$name.jsonl"
        sink=$sink_pid
        pids+=("$sink")
        start_daemon "$name" "$tmp/$name.db" "$mock_addr" "$name" \
                "http://127.0.0.1:$sink_port/hook" 64 "$extra"
        lat_pid=$daemon_pid
        timeout $((limit_latency + 20)) "$build_dir/bare_consumer" -b "$mock_addr" -t "$topic" \
                -g "bare-$name" -n "$paced" "${bare_x[@]}" --latency \
                --timeout $((limit_latency + 10)) >"$tmp/bare-$name.out" 2>"$tmp/bare-$name.err" &
        bare_pid=$!
        pids+=("$bare_pid")
        # Both consumers must own their partitions before the first event, or it waits for the
        # group join.
        ready=
        for _ in $(seq 200); do
                code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
                        "http://127.0.0.1:$daemon_port/readyz")
                if [ "$code" = 200 ] && grep -q '^assigned' "$tmp/bare-$name.out"; then
                        ready=1
                        break
                fi
                sleep 0.1
        done
        [ -n "$ready" ] || die "ctxhookd (/readyz $code) or bare_consumer got no partitions within 20 s"
        sleep 1 # the start offsets of the assigned partitions are looked up after the assignment
        "$build_dir/kafka_produce" -b "$mock_addr" -t "$topic" -n "$paced" --rate "$rate" \
                --size "$size" >"$tmp/paced-$name.out" 2>"$tmp/paced-$name.err" ||
                die "kafka_produce --rate failed: $(cat "$tmp/paced-$name.out" "$tmp/paced-$name.err")"
        say "$(cat "$tmp/paced-$name.out")"
        paced_rate=$(field "$(cat "$tmp/paced-$name.out")" rate)
        t_launch=$(now)
        wait_metric 'ctxhookd_deliveries_total{hook="bench",result="delivered"}' "$paced" 10
        lat[$name.note]="$(partial_note "$paced")"
        lat[$name.hwm]="$(hwm_kb "$lat_pid")"
        lat[$name.anon]=$anon_peak
        wait "$bare_pid" || die "bare_consumer --latency: $(cat "$tmp/bare-$name.err")"
        lat[$name.bare]="$(grep '^consumed=' "$tmp/bare-$name.out")"
        stop "$lat_pid"
        stop "$sink"
        stop "$mock_pid"
        # Every first attempt answered 200: the sink's receive time minus the event's "time"
        # (kafka_produce's clock when it handed the event over), both in whole milliseconds.
        awk '{
                if (!match($0, /"received_ms":[0-9]+/)) next
                rx = substr($0, RSTART + 14, RLENGTH - 14)
                if (!match($0, /"payload":\{"hook":"[^"]*","event":\{[^}]*"time":[0-9]+/)) next
                ev = substr($0, RSTART, RLENGTH); sub(/.*"time":/, "", ev)
                if ($0 !~ /"attempt":1,/ || $0 !~ /"status":200}$/) { other++; next }
                print rx - ev
        } END { if (other) print other > "/dev/stderr" }' "$tmp/$name.jsonl" \
                2>"$tmp/$name.other" | sort -n >"$tmp/$name.ms"
        n=$(wc -l <"$tmp/$name.ms")
        [ "$n" -gt 0 ] || die "the latency sink recorded no webhook"
        other=$(cat "$tmp/$name.other")
        [ -z "$other" ] || failed="$failed $other webhooks of the $name run were retries or not 200;"
        lat[$name.n]="$n"
        lat[$name.p50]="$(pct 50 "$n" "$tmp/$name.ms")"
        lat[$name.p99]="$(pct 99 "$n" "$tmp/$name.ms")"
        lat[$name.max]="$(tail -n1 "$tmp/$name.ms")"
}
# pct P N FILE -> the P-th percentile (nearest rank) of the N sorted numbers in FILE
pct() {
        awk -v p="$1" -v n="$2" 'NR == int((n * p + 99) / 100) { print; exit }' "$3"
}
report_latency() { # NAME LABEL
        echo "  latency, $2: ${lat[$1.n]} webhooks of $paced events sent at ${paced_rate}/s;" \
                "p50 ${lat[$1.p50]} ms, p99 ${lat[$1.p99]} ms, max ${lat[$1.max]} ms${lat[$1.note]}"
        echo "    bare consumer meanwhile: ${lat[$1.bare]}"
}
declare -A lat
failed=
latency_run latency ""
report_latency latency "fetch.wait.max.ms as configured (librdkafka default 500)"
latency_run latency5 5
report_latency latency5 "fetch.wait.max.ms = 5"

peak=$(printf '%s\n' "$ingest_hwm" "$down_hwm" "$deliver_hwm" "${lat[latency.hwm]}" \
        "${lat[latency5.hwm]}" | sort -n | tail -n1)

echo
echo "=== Event pipeline benchmark ($events events of $size bytes, $partitions partitions; $(nproc) CPUs shared by all processes) ==="
printf '  %-30s %8s msg/s  (group of its own, daemon'"'"'s consumer settings)\n' \
        "bare consumer" "$(field "$bare_daemon" rate)"
printf '  %-30s %8s msg/s  (queued.min.messages, queued.max.messages.kbytes at defaults)\n' \
        "bare consumer, queue defaults" "$(field "$bare_default" rate)"
printf '  %-30s %8s ev/s   (target >= 100000; %s%% of the bare consumer; %s/s from start; CPU %s, mock %s)%s\n' \
        "ctxhookd Kafka -> outbox" "$ingest_rate" \
        "$(calc 'if (b > 0) printf "%.0f", 100 * a / b; else print "n/a"' a="$ingest_rate" \
                b="$(field "$bare_daemon" rate)")" "$ingest_start_rate" "$ingest_cpu" \
        "$ingest_mock_cpu" "$ingest_partial"
printf '  %-30s %8s ev/s   (every delivery tried once and rescheduled: %s; CPU %s)%s\n' \
        "  same, webhook port closed" "$down_rate" "$down_retries" "$down_cpu" "$down_partial"
printf '  %-30s %8s wh/s   (target >= 10000; %s/s from start; sink alone %s req/s; CPU %s, sink %s)%s\n' \
        "ctxhookd delivery" "$deliver_rate" "$deliver_start_rate" "$sink_capacity" \
        "$deliver_cpu" "$deliver_sink_cpu" "$deliver_partial"
printf '  %-30s %8s ms     (target < 20; p50 %s, max %s; bare consumer p99 %s)%s\n' \
        "event -> webhook p99" "${lat[latency.p99]}" "${lat[latency.p50]}" "${lat[latency.max]}" \
        "$(field "${lat[latency.bare]}" p99_ms)" "${lat[latency.note]}"
printf '  %-30s %8s ms     (fetch.wait.max.ms = 5: p50 %s, max %s; bare consumer p99 %s)%s\n' \
        "  same, no idle fetch wait" "${lat[latency5.p99]}" "${lat[latency5.p50]}" \
        "${lat[latency5.max]}" "$(field "${lat[latency5.bare]}" p99_ms)" "${lat[latency5.note]}"
printf '  %-30s %8s MiB    (VmHWM: ingest %s, port closed %s, delivery %s, latency %s and %s)\n' \
        "ctxhookd peak RSS" "$(mib "$peak")" "$(mib "$ingest_hwm")" "$(mib "$down_hwm")" \
        "$(mib "$deliver_hwm")" "$(mib "${lat[latency.hwm]}")" "$(mib "${lat[latency5.hwm]}")"
anon_max=$(printf '%s\n' "$ingest_anon" "$down_anon" "$deliver_anon" "${lat[latency.anon]}" \
        "${lat[latency5.anon]}" | sort -n | tail -n1)
printf '  %-30s %8s MiB    (largest RssAnon seen: ingest %s, port closed %s, delivery %s, latency %s and %s)\n' \
        "  without file pages" "$(mib "$anon_max")" "$(mib "$ingest_anon")" "$(mib "$down_anon")" \
        "$(mib "$deliver_anon")" "$(mib "${lat[latency.anon]}")" "$(mib "${lat[latency5.anon]}")"
echo "  (load average now $(loadavg); rates from the first event counted to the last, metrics" \
        "polled every 0.1 s; latencies at ${paced_rate}/s for ${rate_seconds} s, 1 ms resolution)"

[ "$deliver_other" -eq 0 ] || failed="$failed $deliver_other deliveries to the sink were not delivered;"
if [ -n "$failed" ]; then
        echo "pipeline_bench: figures are not valid:$failed" >&2
        exit 1
fi
exit 0
