#!/usr/bin/env bash
# Added latency and throughput of chatgate over its upstream, side by side on one machine:
# Debian's nginx (one worker) serves a static OpenAI chat completion and a 22-event SSE stream;
# wrk POSTs /v1/chat/completions to the mock directly and through chatgate (release build, an
# `openai` model pointing at nginx), at 1/16/64 connections, non-streamed and streamed, on
# SQLite and PostgreSQL; median of 3 runs. Prints the added p50/p99 and the req/s ratio.
#
#   scripts/bench_overhead.sh            # 10 s runs, 3 each (about 25 minutes)
#   scripts/bench_overhead.sh --quick    # 3 s runs, 1 each
#
# Needs nginx, wrk, python3 (apt-get install -y nginx wrk). PostgreSQL is measured when
# BENCH_POSTGRES_URL (or TEST_POSTGRES_URL) is set, in a schema of its own that is dropped after.
set -euo pipefail

# BENCH_DURATION / BENCH_RUNS override the run length (s) and count, e.g. for a shorter sitting.
DURATION=${BENCH_DURATION:-10}
RUNS=${BENCH_RUNS:-3}
if [[ "${1:-}" == "--quick" ]]; then
  DURATION=3
  RUNS=1
fi
MOCK_PORT=${BENCH_MOCK_PORT:-18801}
GATE_PORT=${BENCH_GATE_PORT:-18702}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/scripts/bench
for tool in nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx wrk)" >&2; exit 1; }
done
# Debian keeps nginx in /usr/sbin, which a non-login PATH may lack.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d)
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${PG_SCHEMA:-}" ]]; then
    psql -q "$PG_BASE" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet)
GATE=$ROOT/target/release/chatgate

python3 "$BENCH/mock_bodies.py" "$MOCK_PORT" "$WORK"
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}
wait_port "$MOCK_PORT" || { cat "$WORK/nginx_error.log" >&2; exit 1; }

body() { # stream? → file
  local file=$WORK/body_$1.json
  printf '{"model":"mock","messages":[{"role":"system","content":"you are a benchmark"},{"role":"user","content":"say something"}],"stream":%s}' "$1" >"$file"
  echo "$file"
}

# One wrk run; prints "p50_us p99_us rps errors".
measure() { # url body_file token connections
  local out
  out=$(BENCH_BODY=$2 BENCH_TOKEN=$3 wrk -t1 -c"$4" -d"${DURATION}s" -s "$BENCH/post.lua" "$1" 2>&1 | grep '^BENCH')
  local p50 p99 rps errors
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$out")
  rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$out")
  errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$out")
  echo "$p50 $p99 $rps $errors"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Median of RUNS runs of each of p50, p99, rps; errors summed.
median_of_runs() { # url body token connections
  local p50s=() p99s=() rpss=() errors=0
  for _ in $(seq 1 "$RUNS"); do
    read -r p50 p99 rps err < <(measure "$@")
    p50s+=("$p50"); p99s+=("$p99"); rpss+=("$rps"); errors=$((errors + err))
  done
  echo "$(printf '%s\n' "${p50s[@]}" | median) $(printf '%s\n' "${p99s[@]}" | median) $(printf '%s\n' "${rpss[@]}" | median) $errors"
}

start_gate() { # database_url
  printf '[[models]]\nname = "mock"\nprovider = "openai"\nbase_url = "http://127.0.0.1:%s/sse/v1"\nmax_attempts = 1\n' \
    "$MOCK_PORT" >"$WORK/gate.toml"
  CHATGATE_CONFIG=$WORK/gate.toml CHATGATE_BIND=127.0.0.1:$GATE_PORT DATABASE_URL=$1 \
    CHATGATE_JWT_SECRET=$SECRET \
    CHATGATE_USER_RATE_LIMIT=1000000000 CHATGATE_DAILY_QUOTA=1000000000 RUST_LOG=warn \
    "$GATE" serve >"$WORK/gate.log" 2>&1 &
  GATE_PID=$!
  PIDS+=($GATE_PID)
  wait_port "$GATE_PORT" || { cat "$WORK/gate.log" >&2; exit 1; }
  TOKEN=$(CHATGATE_JWT_SECRET=$SECRET "$GATE" token --sub bench-user)
}

stop_gate() {
  kill "$GATE_PID" 2>/dev/null || true
  wait "$GATE_PID" 2>/dev/null || true
}

BACKENDS=(sqlite)
PG_BASE=${BENCH_POSTGRES_URL:-${TEST_POSTGRES_URL:-}}
[[ -n "$PG_BASE" ]] && BACKENDS+=(postgres)

printf 'runs of %ss, median of %s; times in ms\n\n' "$DURATION" "$RUNS"
printf '| db | reply | conns | mock p50 / p99 | chatgate p50 / p99 | added p50 / p99 | mock req/s | chatgate req/s | ratio |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for backend in "${BACKENDS[@]}"; do
  if [[ $backend == sqlite ]]; then
    url=$WORK/bench.db
  else
    PG_SCHEMA=bench_$(date +%s)_$$
    psql -q "$PG_BASE" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
    sep='?'; [[ $PG_BASE == *\?* ]] && sep='&'
    url="${PG_BASE}${sep}options=-csearch_path%3D${PG_SCHEMA}"
  fi
  start_gate "$url"
  for stream in false true; do
    mode=$([[ $stream == true ]] && echo streamed || echo whole)
    mock_path=$([[ $stream == true ]] && echo sse || echo json)
    file=$(body "$stream")
    for conns in 1 16 64; do
      read -r m50 m99 mrps merr < <(median_of_runs "http://127.0.0.1:$MOCK_PORT/$mock_path/v1/chat/completions" "$file" "" "$conns")
      read -r g50 g99 grps gerr < <(median_of_runs "http://127.0.0.1:$GATE_PORT/v1/chat/completions" "$file" "$TOKEN" "$conns")
      awk -v db="$backend" -v mode="$mode" -v c="$conns" -v m50="$m50" -v m99="$m99" -v g50="$g50" \
        -v g99="$g99" -v mrps="$mrps" -v grps="$grps" -v err="$((merr + gerr))" 'BEGIN {
          note = err > 0 ? sprintf(" (%d errors)", err) : ""
          printf "| %s | %s | %d | %.2f / %.2f | %.2f / %.2f | **%+.2f / %+.2f** | %.0f | %.0f | %.3f%s |\n",
            db, mode, c, m50/1000, m99/1000, g50/1000, g99/1000, (g50-m50)/1000, (g99-m99)/1000,
            mrps, grps, grps/mrps, note }'
    done
  done
  stop_gate
done
