#!/usr/bin/env bash
# Resumable replies under load: `chatgate loadtest` with and without `--drop-rate`, the two
# modes interleaved in one sitting, a fresh server and SQLite database per run.
#
#   scripts/bench_drop.sh                    # echo (no delay), 3 pairs of 5 s runs
#   BENCH_DELAY_MS=20 scripts/bench_drop.sh  # a model that streams a word every 20 ms
#
# Prints each run, then the medians, their ratio and the server's peak RSS (VmHWM).
set -euo pipefail

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-5}
CONNECTIONS=${BENCH_CONNECTIONS:-1000}
DROP=${BENCH_DROP_RATE:-0.1}
DELAY_MS=${BENCH_DELAY_MS:-0}
PORT=${BENCH_GATE_PORT:-18731}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < CONNECTIONS * 2 + 200 )); then
  echo "open-file limit $(ulimit -n) is too low for $CONNECTIONS connections" >&2
  exit 1
fi
(cd "$ROOT" && cargo build --release --quiet --bin chatgate)
GATE=$ROOT/target/release/chatgate
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
cat >"$WORK/models.toml" <<EOF
[[models]]
name = "bench"
provider = "echo"
delay_ms = $DELAY_MS
EOF

run() { # drop-rate → one JSON line: chats_per_sec, peak_rss_kib, resume
  local dir
  dir=$(mktemp -d "$WORK/run.XXXX")
  CHATGATE_CONFIG=$WORK/models.toml CHATGATE_BIND=127.0.0.1:$PORT DATABASE_URL=$dir/chatgate.db \
    CHATGATE_JWT_SECRET=$SECRET CHATGATE_USER_RATE_LIMIT=1000000000 \
    CHATGATE_DAILY_QUOTA=1000000000 RUST_LOG=warn "$GATE" serve >"$dir/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  local drop=()
  [[ $1 != 0 ]] && drop=(--drop-rate "$1")
  local out
  out=$("$GATE" loadtest --url "http://127.0.0.1:$PORT" --secret "$SECRET" --users "$CONNECTIONS" \
    --connections "$CONNECTIONS" --duration "$DURATION" --model bench --json "${drop[@]}" \
    2>"$dir/loadtest.log")
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  python3 -c 'import json,sys; o=json.loads(sys.argv[1]); print(json.dumps({"drop": float(sys.argv[3]), "chats_per_sec": round(o["chats_per_sec"]), "errors": o["errors"], "peak_rss_kib": int(sys.argv[2]), "resume": o.get("resume")}))' \
    "$out" "$hwm" "$1"
}

for _ in $(seq 1 "$RUNS"); do
  run 0 | tee -a "$WORK/runs.jsonl"
  run "$DROP" | tee -a "$WORK/runs.jsonl"
done
python3 - "$WORK/runs.jsonl" "$DELAY_MS" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
plain = [r for r in runs if r["drop"] == 0]
drops = [r for r in runs if r["drop"] != 0]
a = statistics.median(r["chats_per_sec"] for r in plain)
b = statistics.median(r["chats_per_sec"] for r in drops)
bad = sum((r["resume"] or {}).get("gaps", 0) + (r["resume"] or {}).get("duplicates", 0) for r in drops)
lost = sum((r["resume"] or {}).get("lost", 0) for r in drops)
print(f"delay {sys.argv[2]} ms/word: {a:.0f} chats/s without drops, {b:.0f} with, ratio {b / a:.2f}; "
      f"gaps+duplicates {bad}, lost {lost}; peak RSS {max(r['peak_rss_kib'] for r in plain) // 1024} / "
      f"{max(r['peak_rss_kib'] for r in drops) // 1024} MiB")
PY
