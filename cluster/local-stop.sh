#!/usr/bin/env bash
# Stop the head started by cluster/local-start.sh — only its own processes, by pid
# (`ray stop` would end every Ray process of this user on the machine).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${RAY_HEAD_STATE:-$REPO/runs/ray-head.env}"
if [ ! -f "$STATE" ]; then
  echo "no head recorded in $STATE (nothing to stop)"
  exit 0
fi
# shellcheck disable=SC1090
source "$STATE"

# the recorded pids plus any process started since (job drivers, train workers) that
# belongs to this head's temp dir
LATER="$(ps -eo pid=,args= | awk -v d="$RAY_HEAD_TEMP_DIR" 'index($0, d) && !/awk/ {print $1}' | tr '\n' ' ')"
PIDS="$(echo $RAY_HEAD_PIDS $LATER | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -u | tr '\n' ' ')"
for pid in $PIDS; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 1 20); do
  alive=""
  for pid in $PIDS; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
  [ -z "$alive" ] && break
  sleep 0.5
done
for pid in ${alive:-}; do kill -KILL "$pid" 2>/dev/null || true; done
rm -f "$STATE"
echo "stopped the Ray head on port $RAY_HEAD_PORT (pids: ${PIDS:-none})"
