#!/usr/bin/env bash
# What cluster mode costs: 1,000 chatting WebSocket clients (`chatgate loadtest`, the `echo`
# model) against
#   (a) one instance without Redis,
#   (b) one instance with Redis (cluster mode, a cluster of one),
#   (c) two instances with Redis, the clients spread over both (`--url` twice),
# then one client chatting back to back on (a) and (b): the latency Redis adds per chat.
# Release build, PostgreSQL in every case (a fresh schema and Redis key prefix per run, dropped
# after), a fresh server per run; median of BENCH_RUNS runs. Prints chats/s, latency and the
# ratios to (a). The issue's bar: (b) and (c) keep at least 70 % of (a)'s chats/s.
#
#   scripts/bench_cluster.sh             # 20 s runs, 3 each (about 6 minutes after the build)
#   scripts/bench_cluster.sh --quick     # 5 s runs, 1 each
#
# Needs PostgreSQL (BENCH_POSTGRES_URL or TEST_POSTGRES_URL, e.g.
# postgres://postgres@127.0.0.1:5432/test), Redis or Valkey (BENCH_REDIS_URL or TEST_REDIS_URL,
# e.g. redis://127.0.0.1:6379), psql, redis-cli and python3. Both sides need one file descriptor
# per connection: the script raises its soft limit to the hard one. Setup (c) passes `--url`
# twice: `chatgate loadtest` spreads its connections over every --url it is given.
set -euo pipefail

# BENCH_DURATION / BENCH_RUNS / BENCH_CONNECTIONS override the run length (s), the run count
# and the number of clients.
DURATION=${BENCH_DURATION:-20}
RUNS=${BENCH_RUNS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-1000}
SINGLE_DURATION=${BENCH_SINGLE_DURATION:-10}
if [[ "${1:-}" == "--quick" ]]; then
  DURATION=5
  SINGLE_DURATION=5
  RUNS=1
fi
PORT_A=${BENCH_GATE_PORT:-18711}
PORT_B=$((PORT_A + 1))
PG_BASE=${BENCH_POSTGRES_URL:-${TEST_POSTGRES_URL:-}}
REDIS_URL=${BENCH_REDIS_URL:-${TEST_REDIS_URL:-}}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[[ -n "$PG_BASE" ]] || { echo "set BENCH_POSTGRES_URL or TEST_POSTGRES_URL" >&2; exit 1; }
[[ -n "$REDIS_URL" ]] || { echo "set BENCH_REDIS_URL or TEST_REDIS_URL" >&2; exit 1; }
for tool in psql redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y postgresql-client redis-tools python3)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < CONNECTIONS + 200 )); then
  echo "open-file limit $(ulimit -n) is too low for $CONNECTIONS connections; raise the hard limit" >&2
  exit 1
fi

WORK=$(mktemp -d)
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
PIDS=()
PG_SCHEMA=""
KEY_PREFIX=""
cleanup() {
  stop_gates
  drop_state
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --bin chatgate)
GATE=$ROOT/target/release/chatgate

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# A fresh PostgreSQL schema and Redis key prefix for one run.
fresh_state() {
  PG_SCHEMA=bench_cluster_$(date +%s%N)_$$
  psql -q "$PG_BASE" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
  local sep='?'
  [[ $PG_BASE == *\?* ]] && sep='&'
  DB_URL="${PG_BASE}${sep}options=-csearch_path%3D${PG_SCHEMA}"
  KEY_PREFIX="bench:${PG_SCHEMA}:"
}

drop_state() {
  if [[ -n "$PG_SCHEMA" ]]; then
    psql -q "$PG_BASE" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
    PG_SCHEMA=""
  fi
  if [[ -n "$KEY_PREFIX" ]]; then
    redis-cli -u "$REDIS_URL" --scan --pattern "${KEY_PREFIX}*" 2>/dev/null \
      | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
    KEY_PREFIX=""
  fi
}

# Starts one instance on `port`; with `redis` in cluster mode, named `id`.
start_gate() { # port redis|none id
  local env=(CHATGATE_BIND=127.0.0.1:$1 DATABASE_URL=$DB_URL CHATGATE_JWT_SECRET=$SECRET
    CHATGATE_USER_RATE_LIMIT=1000000000 CHATGATE_DAILY_QUOTA=1000000000 RUST_LOG=warn)
  if [[ $2 == redis ]]; then
    env+=(CHATGATE_REDIS_URL=$REDIS_URL CHATGATE_REDIS_KEY_PREFIX=$KEY_PREFIX CHATGATE_INSTANCE_ID=$3)
  fi
  env -u CHATGATE_CONFIG "${env[@]}" "$GATE" serve >"$WORK/$3.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1" || { cat "$WORK/$3.log" >&2; exit 1; }
}

stop_gates() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# Waits until `n` instances heartbeat in Redis, so a run never starts on a half-formed cluster.
wait_members() { # n
  for _ in $(seq 1 200); do
    [[ "$(redis-cli -u "$REDIS_URL" ZCARD "${KEY_PREFIX}instances" 2>/dev/null)" == "$1" ]] && return 0
    sleep 0.05
  done
  echo "the cluster never had $1 members" >&2
  exit 1
}

# Starts the instances of a setup on fresh state. a: one, no Redis; b: one, Redis; c: two, Redis.
start_setup() { # a|b|c
  fresh_state
  case $1 in
    a) start_gate "$PORT_A" none i0 ;;
    b) start_gate "$PORT_A" redis i0; wait_members 1 ;;
    c) start_gate "$PORT_A" redis i0; start_gate "$PORT_B" redis i1; wait_members 2 ;;
  esac
}

urls_of() { # a|b|c
  if [[ $1 == c ]]; then
    echo "--url http://127.0.0.1:$PORT_A --url http://127.0.0.1:$PORT_B"
  else
    echo "--url http://127.0.0.1:$PORT_A"
  fi
}

# One load test on a fresh setup; sets RESULT to "chats_per_sec p50_ms p99_ms errors". (Not
# run in a subshell, so the servers it starts stay in PIDS for the exit trap.)
RESULT=""
measure() { # setup connections duration
  local urls out
  read -ra urls <<<"$(urls_of "$1")"
  start_setup "$1"
  if ! out=$("$GATE" loadtest "${urls[@]}" --secret "$SECRET" --users "$2" --connections "$2"     --duration "$3" --json 2>"$WORK/loadtest.log"); then
    echo "loadtest failed on setup $1:" >&2
    cat "$WORK/loadtest.log" >&2
    exit 1
  fi
  stop_gates
  drop_state
  RESULT=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
errors = sum(r["errors"].values()) if isinstance(r["errors"], dict) else r["errors"]
print(r["chats_per_sec"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], errors)' "$out")
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Median of RUNS runs of chats/s, p50 and p99; errors summed. The setups take turns within a
# round, so a change in the machine's load spreads over all of them.
declare -A CPS P50 P99 ERR
for setup in a b c; do CPS[$setup]=""; P50[$setup]=""; P99[$setup]=""; ERR[$setup]=0; done
for run in $(seq 1 "$RUNS"); do
  for setup in a b c; do
    echo "run $run/$RUNS, setup $setup: $CONNECTIONS clients for ${DURATION}s" >&2
    measure "$setup" "$CONNECTIONS" "$DURATION"
    read -r cps p50 p99 err <<<"$RESULT"
    CPS[$setup]+="$cps "; P50[$setup]+="$p50 "; P99[$setup]+="$p99 "
    ERR[$setup]=$((ERR[$setup] + err))
  done
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }

# One client back to back: what Redis adds to each chat.
declare -A ONE
for setup in a b; do ONE[$setup]=""; done
for run in $(seq 1 "$RUNS"); do
  for setup in a b; do
    echo "run $run/$RUNS, setup $setup: 1 client for ${SINGLE_DURATION}s" >&2
    measure "$setup" 1 "$SINGLE_DURATION"
    read -r _ p50 _ _ <<<"$RESULT"
    ONE[$setup]+="$p50 "
  done
done

echo
printf '%s clients, runs of %ss, median of %s; PostgreSQL; load average at the end: %s\n\n' \
  "$CONNECTIONS" "$DURATION" "$RUNS" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| setup | chats/s | ratio to (a) | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n'
base=$(med "${CPS[a]}")
for setup in a b c; do
  case $setup in
    a) name="(a) one instance, no Redis" ;;
    b) name="(b) one instance, Redis" ;;
    c) name="(c) two instances, Redis" ;;
  esac
  awk -v name="$name" -v cps="$(med "${CPS[$setup]}")" -v base="$base" \
    -v p50="$(med "${P50[$setup]}")" -v p99="$(med "${P99[$setup]}")" -v err="${ERR[$setup]}" \
    'BEGIN { printf "| %s | %.0f | **%.2f** | %.1f | %.1f | %d |\n", name, cps, cps/base, p50, p99, err }'
done
awk -v a="$(med "${ONE[a]}")" -v b="$(med "${ONE[b]}")" 'BEGIN {
  printf "\none client back to back, p50: %.2f ms without Redis, %.2f ms with: %+.2f ms per chat\n", a, b, b-a }'
