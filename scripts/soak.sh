#!/usr/bin/env bash
# Soak test (not in CI): runs a release `chatgate serve` on 127.0.0.1 with a temporary SQLite
# database under SOAK_SECS (default 600) of mixed traffic, and samples the server's RSS and
# open file descriptors every SAMPLE_SECS (default 10) into a CSV; at the end prints min/max
# after the warm-up (WARMUP_SECS, default 120) and the growth from the first to the last
# sample after it.
#
# Traffic, all against a `slow` echo model (SLOW_DELAY_MS per word, default 20):
#   - `chatgate loadtest` with CHAT_CONNS (100) chatting WebSockets,
#   - `chatgate loadtest --openai` with OPENAI_CONNS (8) concurrent streamed requests,
#   - `chatgate loadtest --idle` holding IDLE_CONNS (500) connections,
#   - CHATTERS (2) scripts/soak_ws.py clients that cancel every third chat mid-reply and
#     drop the connection every 10 chats, reconnecting with ?session_id= (resume),
#   - one scripts/soak_ws.py subscriber on the live admin feed (/admin/ws),
#   - a loop here reading /admin/metrics and /admin/sessions/stats every second.
# Sessions expire quickly (CHATGATE_SESSION_TTL_SECS=60) so the sweep runs during the soak.
#
# Usage: scripts/soak.sh            (builds target/release/chatgate unless CHATGATE_BIN is set)
#        SOAK_SECS=300 CHATGATE_BIN=/path/to/chatgate scripts/soak.sh
# Output: the CSV path and the summary; the work directory is kept when KEEP=1.
set -euo pipefail

SOAK_SECS=${SOAK_SECS:-600}
SAMPLE_SECS=${SAMPLE_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-120}
PORT=${PORT:-18750}
CHAT_CONNS=${CHAT_CONNS:-100}
OPENAI_CONNS=${OPENAI_CONNS:-8}
IDLE_CONNS=${IDLE_CONNS:-500}
CHATTERS=${CHATTERS:-2}
SLOW_DELAY_MS=${SLOW_DELAY_MS:-20}

repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${CHATGATE_BIN:-}" ]]; then
    (cd "$repo" && cargo build --release --locked)
    CHATGATE_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/chatgate"
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
server=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    if [[ "${KEEP:-0}" == 1 ]]; then echo "soak: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cat >"$work/chatgate.toml" <<TOML
[[models]]
name = "echo"
provider = "echo"

[[models]]
name = "slow"
provider = "echo"
delay_ms = $SLOW_DELAY_MS
TOML

export CHATGATE_JWT_SECRET
CHATGATE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
base="http://127.0.0.1:$PORT"

CHATGATE_CONFIG="$work/chatgate.toml" CHATGATE_BIND="127.0.0.1:$PORT" \
    DATABASE_URL="$work/chatgate.db" CHATGATE_USER_RATE_LIMIT=100000000 \
    CHATGATE_DAILY_QUOTA=100000000 CHATGATE_ADMIN_RATE_LIMIT=100000 \
    CHATGATE_SESSION_TTL_SECS=60 CHATGATE_SESSION_CLEANUP_SECS=15 RUST_LOG=warn \
    "$CHATGATE_BIN" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -fs "$base/readyz" >/dev/null && break
    sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { echo "soak: server not ready" >&2; cat "$work/server.log" >&2; exit 1; }

admin=$("$CHATGATE_BIN" token --sub soak-admin --role admin --ttl $((SOAK_SECS + 3600)))
user() { "$CHATGATE_BIN" token --sub "$1" --ttl $((SOAK_SECS + 3600)); }

lt=("$CHATGATE_BIN" loadtest --url "$base" --secret "$CHATGATE_JWT_SECRET" --json)
"${lt[@]}" --users 100 --connections "$CHAT_CONNS" --model slow --duration "$SOAK_SECS" \
    >"$work/chats.json" 2>"$work/chats.log" &
pids+=($!)
"${lt[@]}" --users 8 --connections "$OPENAI_CONNS" --model slow --openai --duration "$SOAK_SECS" \
    >"$work/openai.json" 2>"$work/openai.log" &
pids+=($!)
"${lt[@]}" --users 500 --connections "$IDLE_CONNS" --idle --duration "$SOAK_SECS" \
    >"$work/idle.json" 2>"$work/idle.log" &
pids+=($!)
for i in $(seq "$CHATTERS"); do
    python3 "$repo/scripts/soak_ws.py" chatter "$base" "$(user "soak-chatter-$i")" slow "$SOAK_SECS" \
        >"$work/chatter-$i.txt" 2>&1 &
    pids+=($!)
done
python3 "$repo/scripts/soak_ws.py" subscriber "$base" "$admin" "$SOAK_SECS" \
    >"$work/subscriber.txt" 2>&1 &
pids+=($!)

csv="$work/soak.csv"
echo "secs,rss_kb,fds,admin_reads,admin_failures" >"$csv"
start=$(date +%s)
reads=0
failures=0
next_sample=0
while true; do
    elapsed=$(($(date +%s) - start))
    if ((elapsed >= next_sample)); then
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")
        fds=$(find "/proc/$server/fd" -mindepth 1 -maxdepth 1 | wc -l)
        echo "$elapsed,$rss,$fds,$reads,$failures" >>"$csv"
        echo "soak: ${elapsed}s rss=${rss}kB fds=$fds admin_reads=$reads failures=$failures" >&2
        next_sample=$((next_sample + SAMPLE_SECS))
    fi
    ((elapsed >= SOAK_SECS)) && break
    for path in /admin/metrics /admin/sessions/stats; do
        if curl -fs -o /dev/null -H "Authorization: Bearer $admin" "$base$path"; then
            reads=$((reads + 1))
        else
            failures=$((failures + 1))
        fi
    done
    kill -0 "$server" 2>/dev/null || { echo "soak: the server died" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 1
done

# Let the clients finish (loadtest lets replies in flight end), then read their summaries.
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
pids=()
echo "== clients"
for f in chats openai idle; do echo "$f: $(cat "$work/$f.json")"; done
cat "$work"/chatter-*.txt "$work/subscriber.txt"
echo "admin reads: $reads ok, $failures failed"
echo "== server log warnings/errors: $(grep -c . "$work/server.log" || true) lines"
head -5 "$work/server.log"
echo "== samples: $csv"
cp "$csv" "${SOAK_CSV:-/tmp/chatgate-soak.csv}"
awk -F, -v warm="$WARMUP_SECS" '
NR == 1 { next }
NR == 2 { rss0 = $2; fd0 = $3 }
$1 >= warm {
    if (!n++) { rss_first = $2; fd_first = $3; rmin = rmax = $2; fmin = fmax = $3 }
    rss_last = $2; fd_last = $3
    if ($2 < rmin) rmin = $2; if ($2 > rmax) rmax = $2
    if ($3 < fmin) fmin = $3; if ($3 > fmax) fmax = $3
}
END {
    printf "start: rss %.1f MiB, %d fds; %d samples after the %d s warm-up\n", rss0 / 1024, fd0, n, warm
    if (n) {
        printf "after warm-up: rss min %.1f / max %.1f MiB, growth first->last %+.1f MiB (%+.1f %%)\n",
            rmin / 1024, rmax / 1024, (rss_last - rss_first) / 1024, 100 * (rss_last - rss_first) / rss_first
        printf "after warm-up: fds min %d / max %d, growth first->last %+d\n", fmin, fmax, fd_last - fd_first
    }
}' "$csv"
echo "(csv copied to ${SOAK_CSV:-/tmp/chatgate-soak.csv})"
exit "$status"
