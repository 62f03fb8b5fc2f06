#!/usr/bin/env bash
# PostgreSQL benchmark (issue 6): what the PostgreSQL store costs against SQLite, and what a
# second instance on the same database adds, measured in one run on this machine. It starts its
# own PostgreSQL cluster (tools/pg start --durable: fsync on, synchronous_commit off, the
# durability class of the SQLite store's WAL with synchronous=NORMAL) and stops it at exit.
#   (a) Context API: GET of one property and PATCH of three keys, wrk keep-alive load, against
#       one instance on SQLite (the baseline; GET also with its read cache off), one on
#       PostgreSQL, and two on PostgreSQL (each on its own port, the same total of connections
#       split over two wrk processes, one per instance, run at the same time).
#   (b) Kafka → outbox: events/s turned into queued deliveries (deliveries held back, as in
#       pipeline_bench.sh) by one instance on SQLite, one on PostgreSQL, and two on PostgreSQL
#       in one consumer group; each run on a fresh mock Kafka cluster and a fresh database, the
#       events produced once every instance holds partitions.
# Every figure is measured in BENCH_ROUNDS alternating rounds (all runs of round 1, then all of
# round 2 …) and the best round is shown with every round's value, so drift shows.
# It prints one table and never judges the figures: exit 0 when everything could be measured,
# 1 when something could not (and it says what), 64 on usage.
#
# Usage: tests/bench/pg_bench.sh BUILD_DIR
#        (BUILD_DIR holds ctxhookd, mock_kafka, webhook_sink and kafka_produce)
# Environment: BENCH_DURATION (seconds per wrk run, default 5), BENCH_CONNECTIONS (default 64),
#              BENCH_SESSIONS (session ids the PATCH runs rotate over, default 1024),
#              BENCH_EVENTS (events per ingest run, default 100000), BENCH_PARTITIONS (16),
#              BENCH_SIZE (bytes per event, 300), BENCH_ROUNDS (default 2), BENCH_VERBOSE=1,
#              TMPDIR (where the SQLite databases go, default /tmp).
set -u -o pipefail
# shellcheck source=tests/bench/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"

usage() {
        echo "usage: $0 BUILD_DIR   (BUILD_DIR contains ctxhookd, mock_kafka, webhook_sink," \
                "kafka_produce)" >&2
        exit 64
}
[ $# -eq 1 ] || usage
build_dir=$(cd "$1" 2>/dev/null && pwd) || {
        echo "pg_bench: no such directory: $1" >&2
        exit 64
}
script_dir=$(cd "$(dirname "$0")" && pwd)
src_dir=$(cd "$script_dir/../.." && pwd)
duration=${BENCH_DURATION:-5}
conns=${BENCH_CONNECTIONS:-64}
sessions=${BENCH_SESSIONS:-1024}
events=${BENCH_EVENTS:-100000}
partitions=${BENCH_PARTITIONS:-16}
size=${BENCH_SIZE:-300}
verbose=${BENCH_VERBOSE:-0}
rounds=${BENCH_ROUNDS:-2}
pg_threads=8 # [api] threads of the PostgreSQL instances: their pool_size (default 8)
account=12345678
topic=conversation-events
body='"hello world value"'
secret=whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
limit_ingest=90 # seconds per ingest run; a run that runs out reports what it reached

die() {
        echo "pg_bench: cannot measure: $*" >&2
        exit 1
}

for v in duration conns sessions events partitions size rounds; do
        case ${!v} in
        '' | *[!0-9]* | 0) die "$v must be a positive integer, not '${!v}'" ;;
        esac
done
[ "$conns" -ge 2 ] || die "BENCH_CONNECTIONS must be at least 2 (split over two instances)"
for tool in wrk curl awk psql; do
        command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
for prog in ctxhookd mock_kafka webhook_sink kafka_produce; do
        [ -x "$build_dir/$prog" ] || die "$build_dir/$prog not found (cmake --build $1 --target $prog)"
done
[ -r "$script_dir/patch.lua" ] || die "$script_dir/patch.lua not found"
[ -x "$src_dir/tools/pg" ] || die "$src_dir/tools/pg not found"
ctxhookd=$build_dir/ctxhookd

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ctxhookd-pg-bench.XXXXXX") || die "mktemp failed"
chmod 755 "$tmp" # tools/pg runs the server as postgres when we are root
pg_dir=$tmp/pg
pg_started=
pids=()      # stopped with TERM (then KILL) on exit
kill_pids=() # stopped with KILL at once: a sink whose handler sleeps cannot stop in time
wrk_pids=()

# Stops what this script started, by pid, the PostgreSQL cluster, and removes the temp dir, on
# every exit path.
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
        local pid
        for pid in "${wrk_pids[@]}" "${kill_pids[@]}"; do
                kill -KILL "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}"; do
                kill -TERM "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}" "${kill_pids[@]}" "${wrk_pids[@]}"; do
                for _ in $(seq 50); do
                        kill -0 "$pid" 2>/dev/null || break
                        sleep 0.1
                done
                kill -KILL "$pid" 2>/dev/null
                wait "$pid" 2>/dev/null
        done
        [ -n "$pg_started" ] && "$src_dir/tools/pg" stop "$pg_dir" >/dev/null 2>&1
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pct() { # A B -> A as a percentage of B
        calc 'if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a"' a="$1" b="$2"
}

# stop PID: TERM, wait up to 10 s, then KILL; drops it from pids.

# forget PID: drops a process that has exited (and was waited for) from pids.

# first_line FILE PID WHAT -> the first line of FILE once PID has written it (10 s at most).

# ---- PostgreSQL ----
pg_url=$("$src_dir/tools/pg" start "$pg_dir" --durable 2>"$tmp/pg.err") ||
        die "tools/pg start failed: $(cat "$tmp/pg.err")"
pg_started=1
say "PostgreSQL at $pg_url"
# new_db NAME -> the URL of a new, empty database NAME in the cluster.
new_db() {
        psql -q -X -v ON_ERROR_STOP=1 "$pg_url" -c "CREATE DATABASE $1" >/dev/null 2>"$tmp/psql.err" ||
                die "CREATE DATABASE $1 failed: $(cat "$tmp/psql.err")"
        echo "${pg_url%/*}/$1"
}

# ---- ctxhookd ----
# write_conf NAME STORE_LINES [MORE_SECTIONS [API_LINES]] -> $tmp/NAME.conf
write_conf() {
        {
                echo "[api]"
                echo "listen = 127.0.0.1:0"
                [ -n "${4:-}" ] && printf '%s\n' "$4"
                echo "[store]"
                printf '%s\n' "$2"
                echo "[log]"
                echo "level = notice"
                [ -n "${3:-}" ] && printf '%s\n' "$3"
        } >"$tmp/$1.conf"
}
store_sqlite() { # DB_FILE
        printf 'backend = sqlite\npath = %s' "$1"
}
store_pg() { # URL
        printf 'backend = postgresql\nurl = %s' "$1"
}

# start_daemon NAME CONF -> daemon_pid, daemon_port (a process of its own per NAME).
start_daemon() {
        local name=$1 conf=$2
        "$ctxhookd" run -c "$conf" >"$tmp/$name.out" 2>"$tmp/$name.err" &
        daemon_pid=$!
        pids+=("$daemon_pid")
        daemon_port=
        for _ in $(seq 200); do
                daemon_port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' \
                        "$tmp/$name.err" 2>/dev/null | head -n1)
                [ -n "$daemon_port" ] && break
                kill -0 "$daemon_pid" 2>/dev/null || break
                sleep 0.05
        done
        [ -n "$daemon_port" ] || die "ctxhookd ($name) did not report 'listening on http://…':
$(tail -n 20 "$tmp/$name.err")"
        say "$name: ctxhookd pid $daemon_pid port $daemon_port"
}

apikey() { # CONF -> the new key
        "$ctxhookd" apikey create --account "$account" -c "$1" >"$tmp/key.out" 2>"$tmp/key.err" ||
                die "ctxhookd apikey create failed: $(cat "$tmp/key.err")"
        tail -n1 "$tmp/key.out"
}

# ---- (a) Context API ----
# wrk_start NAME CONNS ARGS... -> runs wrk in the background (bounded), output in $tmp/NAME.wrk.
wrk_start() {
        local name=$1 c=$2
        shift 2
        timeout $((duration + 20)) wrk -t1 -c"$c" -d"${duration}s" --latency "$@" \
                >"$tmp/$name.wrk" 2>&1 &
        wrk_pids+=($!)
}
# wrk_wait: waits for every wrk started; fails when one failed.
wrk_wait() {
        local pid rc=0
        for pid in "${wrk_pids[@]}"; do
                wait "$pid" || rc=1
        done
        wrk_pids=()
        return $rc
}
wrk_field() { # NAME rps|non2xx|errors|p99
        local f=$tmp/$1.wrk
        [ "$verbose" = 1 ] && [ "$2" = rps ] && sed 's/^/    | /' "$f"
        case $2 in
        rps) awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f" ;;
        p99) awk '/^ +99%/ { print $2 }' "$f" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$f" ;;
        errors) awk '/Socket errors:/ { gsub(",", ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' "$f" ;;
        esac
}
failed=
# check_wrk NAME WHAT: the run's answers must all be 2xx (GET) / 204 (PATCH).
check_wrk() {
        local n st other
        n=$(wrk_field "$1" non2xx)
        [ "$n" -eq 0 ] || failed="$failed $2: $n non-2xx responses;"
        st=$(grep '^patch statuses:' "$tmp/$1.wrk")
        if [ -n "$st" ]; then
                other=$(sed -n 's/.*other=\([0-9]*\).*/\1/p' <<<"$st")
                [ "${other:-1}" -eq 0 ] || failed="$failed $2: $st;"
        fi
}

# put_check PORT KEY: the property the GET runs read, written and read back.
put_check() {
        local url=http://127.0.0.1:$1/v1/account/$account/bench/sess1/properties/note code
        code=$(curl -s -o "$tmp/put.body" -w '%{http_code}' --max-time 5 -X PUT \
                -H "maven-api-key: $2" -H 'Content-Type: application/json' --data-raw "$body" \
                "$url") || die "PUT $url failed (curl)"
        [ "$code" = 204 ] || die "PUT $url answered $code: $(cat "$tmp/put.body")"
        code=$(curl -s -o "$tmp/get.body" -w '%{http_code}' --max-time 5 -H "maven-api-key: $2" \
                "$url") || die "GET $url failed (curl)"
        if [ "$code" != 200 ] || [ "$(cat "$tmp/get.body")" != "$body" ]; then
                die "GET $url answered $code '$(cat "$tmp/get.body")', want 200 '$body'"
        fi
}

declare -A fig # fig[RUN.FIGURE]: the best round's figures; fig[RUN.FIGURE.rounds]: every round's

# keep_best RUN FIGURE RATE [P99 [SPLIT]]: records a round's rate; the best round's rate, p99
# and per-instance split become fig[RUN.FIGURE], fig[RUN.FIGURE_p99], fig[RUN.FIGURE_split].
keep_best() {
        local run=$1 f=$2 v=$3
        case $v in '' | *[!0-9]*) v=0 ;; esac
        fig[$run.$f.rounds]="${fig[$run.$f.rounds]:-}${fig[$run.$f.rounds]:+ }$v"
        if [ "$v" -ge "${fig[$run.$f]:-0}" ]; then
                fig[$run.$f]=$v
                fig[$run.${f}_p99]=${4:-}
                fig[$run.${f}_split]=${5:-}
        fi
}

# load_run get|patch RUN KEY ROUND PORT...: one wrk per port, all at once, the connections
# split between them; GET reads the one property, PATCH merges three keys into session ids
# rotating over BENCH_SESSIONS, in a namespace per wrk (so that two wrk do not write the same
# rows in lockstep; one wrk over one instance does not either).
load_run() {
        local kind=$1 run=$2 key=$3 round=$4
        shift 4
        local ports=("$@") n=$# i c rps total=0 split='' p99='' name
        for i in "${!ports[@]}"; do
                c=$((conns / n))
                [ "$i" -eq 0 ] && c=$((conns - (n - 1) * (conns / n)))
                name=$run-$kind-r$round-$i
                if [ "$kind" = get ]; then
                        wrk_start "$name" "$c" -H "maven-api-key: $key" \
                                "http://127.0.0.1:${ports[$i]}/v1/account/$account/bench/sess1/properties/note"
                else
                        wrk_start "$name" "$c" -H "maven-api-key: $key" -s "$script_dir/patch.lua" \
                                "http://127.0.0.1:${ports[$i]}" -- "$account" "bench$i" "$sessions"
                fi
        done
        wrk_wait || die "wrk $kind ($run) failed: $(cat "$tmp/$run-$kind-r$round"-*.wrk)"
        for i in "${!ports[@]}"; do
                name=$run-$kind-r$round-$i
                check_wrk "$name" "$run $kind round $round"
                rps=$(wrk_field "$name" rps)
                total=$((total + ${rps:-0}))
                split="$split${split:+ + }$rps"
                p99="$p99${p99:+ / }$(wrk_field "$name" p99)"
        done
        for i in "${api_pids[@]}"; do
                kill -0 "$i" 2>/dev/null || die "a ctxhookd died under load ($run $kind): $(tail -n 20 "$tmp"/api-*.err)"
        done
        keep_best "$run" "$kind" "$total" "$p99" "$split"
        printf '  round %s %-15s %-5s %7s req/s  (%s; p99 %s)\n' "$round" "$run" "$kind" "$total" \
                "$split" "$p99"
}

echo "pg_bench: $(nproc) CPUs, load average $(loadavg); wrk, ctxhookd, PostgreSQL $(psql -X -A -t \
        "$pg_url" -c 'SHOW server_version' 2>/dev/null) (tools/pg --durable) and the mock Kafka" \
        "cluster share these CPUs; best of $rounds alternating rounds"

# The daemons of (a), all running meanwhile (an idle one costs next to nothing): SQLite with
# its read cache, a second on the same database file without it (what the store itself costs
# per GET), and two on one PostgreSQL database.
api_pids=()
write_conf api-sqlite "$(store_sqlite "$tmp/api.db")"
write_conf api-sqlite-nocache "$(store_sqlite "$tmp/api.db")
cache_entries = 0"
sqlite_key=$(apikey "$tmp/api-sqlite.conf") || exit 1
start_daemon api-sqlite "$tmp/api-sqlite.conf"
sqlite_port=$daemon_port
api_pids+=("$daemon_pid")
start_daemon api-sqlite-nocache "$tmp/api-sqlite-nocache.conf"
nocache_port=$daemon_port
api_pids+=("$daemon_pid")
put_check "$sqlite_port" "$sqlite_key"
api_url=$(new_db api) || exit 1
# As many HTTP threads as store connections: a request holds its thread while it waits for
# PostgreSQL, and with one thread per CPU (the default) two requests at a time wait for the
# network (5 500-17 000 GET/s here, by how the connections fall on the threads, against 22 000
# with 8).
write_conf api-pg "$(store_pg "$api_url")" "" "threads = $pg_threads"
pg_key=$(apikey "$tmp/api-pg.conf") || exit 1
start_daemon api-pg1 "$tmp/api-pg.conf"
pg1_port=$daemon_port
api_pids+=("$daemon_pid")
start_daemon api-pg2 "$tmp/api-pg.conf"
pg2_port=$daemon_port
api_pids+=("$daemon_pid")
put_check "$pg1_port" "$pg_key"
put_check "$pg2_port" "$pg_key"

for round in $(seq "$rounds"); do
        load_run get sqlite "$sqlite_key" "$round" "$sqlite_port"
        load_run get sqlite-nocache "$sqlite_key" "$round" "$nocache_port"
        load_run get pg "$pg_key" "$round" "$pg1_port"
        load_run get pg2 "$pg_key" "$round" "$pg1_port" "$pg2_port"
        load_run patch sqlite "$sqlite_key" "$round" "$sqlite_port"
        load_run patch pg "$pg_key" "$round" "$pg1_port"
        load_run patch pg2 "$pg_key" "$round" "$pg1_port" "$pg2_port"
done
for pid in "${api_pids[@]}"; do
        stop "$pid"
done
api_pids=()

# ---- (b) Kafka → outbox ----
metric() { # PORT NAME -> the sample's value (0 when absent)
        curl -s --max-time 2 "http://127.0.0.1:$1/metrics" |
                awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}
queued='ctxhookd_events_total{result="queued"}'

# ingest_run RUN ROUND INSTANCES STORE_LINES: a fresh mock cluster, INSTANCES daemons in one
# group (deliveries held back: max_in_flight = 1 and a sink that never answers), events produced
# once every instance holds partitions, then the sum of the queued counters polled every 0.1 s
# until it reaches the event count. Keeps the best round in fig[RUN.ingest] (keep_best); a run
# that ran out of time is noted in fig[RUN.note].
ingest_run() {
        local run=$1 round=$2 n=$3 store=$4 id=$1-r$2 rate mock_pid mock_addr stalled stalled_port i ports=() dpids=()
        local ready code c t t_first='' c_first=0 t_last c_last per total partial=''
        "$build_dir/mock_kafka" --topic "$topic" --partitions "$partitions" \
                >"$tmp/mock-$id.out" 2>"$tmp/mock-$id.err" &
        mock_pid=$!
        pids+=("$mock_pid")
        mock_addr=$(first_line "$tmp/mock-$id.out" "$mock_pid" "mock_kafka") || exit 1
        "$build_dir/webhook_sink" --out /dev/null --delay-ms 600000 \
                >"$tmp/stalled-$id.out" 2>"$tmp/stalled-$id.err" &
        stalled=$!
        kill_pids+=("$stalled")
        stalled_port=$(first_line "$tmp/stalled-$id.out" "$stalled" "webhook_sink") || exit 1
        write_conf "ingest-$id" "$store" "[kafka]
brokers = $mock_addr
topic = $topic
group = ingest-$id
[delivery]
max_in_flight = 1
outbox_max = 100000000
retry_base_ms = 3600000
retry_max_ms = 86400000
[hook \"bench\"]
on = conversation.end
url = http://127.0.0.1:$stalled_port/hook
secret = $secret
timeout_ms = 300000"
        for i in $(seq "$n"); do
                start_daemon "ingest-$id-$i" "$tmp/ingest-$id.conf"
                ports+=("$daemon_port")
                dpids+=("$daemon_pid")
        done
        # Every instance holds partitions (/readyz says so) before the first event: the figure
        # is the group at work, not its forming.
        for i in "${!ports[@]}"; do
                ready=
                for _ in $(seq 600); do
                        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
                                "http://127.0.0.1:${ports[$i]}/readyz")
                        [ "$code" = 200 ] && ready=1 && break
                        sleep 0.1
                done
                [ -n "$ready" ] || die "ctxhookd ($run, instance $((i + 1))) got no partitions within 60 s:
$(tail -n 20 "$tmp/ingest-$id-$((i + 1)).err")"
        done
        # With two, the first one ready may still be rebalancing: wait until both report an
        # assignment after the last revocation.
        if [ "$n" -gt 1 ]; then
                for _ in $(seq 300); do
                        ready=1
                        for i in $(seq "$n"); do
                                tail -n 1 <(grep -E 'partition\(s\) of .* (assigned|revoked)' \
                                        "$tmp/ingest-$id-$i.err") | grep -q assigned || ready=
                        done
                        [ -n "$ready" ] && break
                        sleep 0.1
                done
        fi
        "$build_dir/kafka_produce" -b "$mock_addr" -t "$topic" -n "$events" --size "$size" \
                >"$tmp/produce-$id.out" 2>"$tmp/produce-$id.err" &
        local producer=$!
        pids+=("$producer")
        local t_start
        t_start=$(now)
        while :; do
                total=0
                for i in "${!ports[@]}"; do
                        c=$(metric "${ports[$i]}" "$queued")
                        total=$((total + ${c:-0}))
                done
                t=$(now)
                if [ -z "$t_first" ] && [ "$total" -gt 0 ]; then
                        t_first=$t c_first=$total
                fi
                t_last=$t c_last=$total
                [ "$c_last" -ge "$events" ] && break
                for i in "${!dpids[@]}"; do
                        kill -0 "${dpids[$i]}" 2>/dev/null ||
                                die "ctxhookd ($run) died: $(tail -n 20 "$tmp/ingest-$id-$((i + 1)).err")"
                done
                if [ "$(calc 'print (t - s >= l)' t="$t" s="$t_start" l="$limit_ingest")" = 1 ]; then
                        partial=" PARTIAL: $c_last of $events in ${limit_ingest} s"
                        break
                fi
                sleep 0.1
        done
        wait "$producer" || die "kafka_produce failed: $(cat "$tmp/produce-$id.out" "$tmp/produce-$id.err")"
        forget "$producer"
        grep -q " high=$events\$" "$tmp/produce-$id.out" ||
                die "the mock cluster did not keep all $events events: $(cat "$tmp/produce-$id.out")" \
                        "(raise BENCH_PARTITIONS)"
        rate=$(calc 'd = b - a; if (d > 0) printf "%.0f", (cl - cf) / d; else print "n/a"' \
                a="$t_first" b="$t_last" cf="$c_first" cl="$c_last")
        per=
        for i in "${!ports[@]}"; do
                per="$per${per:+ + }$(metric "${ports[$i]}" "$queued")"
        done
        keep_best "$run" ingest "$rate" "" "$per"
        [ -n "$partial" ] && fig[$run.note]="${fig[$run.note]:-} round $round:$partial"
        printf '  round %s ingest %-8s %7s ev/s   (queued per instance: %s; producer %s/s)%s\n' \
                "$round" "$run" "$rate" "$per" \
                "$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$tmp/produce-$id.out")" "$partial"
        kill -KILL "$stalled" 2>/dev/null
        wait "$stalled" 2>/dev/null
        for i in "${!dpids[@]}"; do
                stop "${dpids[$i]}"
        done
        stop "$mock_pid"
}

for round in $(seq "$rounds"); do
        ingest_run sqlite "$round" 1 "$(store_sqlite "$tmp/ingest-$round.db")"
        url=$(new_db "ingest_pg_$round") || exit 1
        ingest_run pg "$round" 1 "$(store_pg "$url")"
        url=$(new_db "ingest_pg2_$round") || exit 1
        ingest_run pg2 "$round" 2 "$(store_pg "$url")"
done

echo
echo "=== PostgreSQL benchmark (best of $rounds alternating rounds; $(nproc) CPUs shared by wrk, ctxhookd, PostgreSQL, mock Kafka) ==="
echo "  Context API: wrk -t1 -c$conns -d${duration}s keep-alive; PG x2: two wrk -c$((conns / 2)) at once, one per instance;"
echo "  [api] threads: SQLite one per CPU (the default), PostgreSQL $pg_threads (= pool_size)"
row() { # LABEL SQLITE PG PG2 [NOTE]
        printf '  %-24s %10s %11s %20s  %s\n' "$@"
}
rounds_of() { # RUN FIGURE -> "a b" (every round)
        echo "${fig[$1.$2.rounds]:-}"
}
row "" SQLite PostgreSQL "PG x2" "PG/SQLite, x2/x1; every round"
row "GET one property, req/s" "${fig[sqlite.get]}" "${fig[pg.get]}" "${fig[pg2.get]}" \
        "$(pct "${fig[pg.get]}" "${fig[sqlite.get]}"), $(pct "${fig[pg2.get]}" "${fig[pg.get]}"); $(rounds_of sqlite get) | $(rounds_of pg get) | $(rounds_of pg2 get)"
row "  p99" "${fig[sqlite.get_p99]}" "${fig[pg.get_p99]}" "${fig[pg2.get_p99]}"
row "  SQLite cache off" "${fig[sqlite-nocache.get]}" "" "" \
        "PG is $(pct "${fig[pg.get]}" "${fig[sqlite-nocache.get]}") of it; $(rounds_of sqlite-nocache get)"
row "PATCH 3 keys, req/s" "${fig[sqlite.patch]}" "${fig[pg.patch]}" "${fig[pg2.patch]}" \
        "$(pct "${fig[pg.patch]}" "${fig[sqlite.patch]}"), $(pct "${fig[pg2.patch]}" "${fig[pg.patch]}"); $(rounds_of sqlite patch) | $(rounds_of pg patch) | $(rounds_of pg2 patch)"
row "  p99" "${fig[sqlite.patch_p99]}" "${fig[pg.patch_p99]}" "${fig[pg2.patch_p99]}"
row "  PG x2 per instance" "" "" "" "GET ${fig[pg2.get_split]}, PATCH ${fig[pg2.patch_split]}"
echo "  (SQLite answers repeated GETs from its read cache, [store] cache_entries, unless it is off;"
echo "   PostgreSQL never caches: other hosts write the same data)"
echo "  Kafka -> outbox: $events events of $size bytes, $partitions partitions, deliveries held back; PG x2: one consumer group"
row "ingest, events/s" "${fig[sqlite.ingest]}" "${fig[pg.ingest]}" "${fig[pg2.ingest]}" \
        "$(pct "${fig[pg.ingest]}" "${fig[sqlite.ingest]}"), $(pct "${fig[pg2.ingest]}" "${fig[pg.ingest]}"); $(rounds_of sqlite ingest) | $(rounds_of pg ingest) | $(rounds_of pg2 ingest)"
row "  PG x2 per instance" "" "" "" "queued ${fig[pg2.ingest_split]}"
for run in sqlite pg pg2; do
        [ -n "${fig[$run.note]:-}" ] && echo "  ingest $run:${fig[$run.note]}"
done
echo "  (load average now $(loadavg); ingest rates from the first event counted to the last, counters polled every 0.1 s)"

if [ -n "$failed" ]; then
        echo "pg_bench: figures are not valid:$failed" >&2
        exit 1
fi
exit 0
