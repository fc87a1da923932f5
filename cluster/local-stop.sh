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
PIDS="$(echo $RAY_HEAD_PIDS $LATER | tr ' ' '\n' | { grep -E '^[0-9]+$' || true; } | sort -u | tr '\n' ' ')"
# In Ray's own order: the raylet first (it exits at once while the GCS is up), then the rest
# (drivers, workers, dashboard, monitors), the GCS last. All at once, the raylet, the GCS and the
# autoscaler monitor ignored TERM for over 10 s, waiting on each other, and were killed.
alive() {  # the given pids still running (a zombie, exited and not yet reaped, is not)
  for pid in "$@"; do
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ''|Z*) ;; *) printf '%s ' "$pid" ;; esac
  done
}
stop_group() {  # TERM, up to 5 s for them to exit, then KILL
  [ $# -eq 0 ] && return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    [ -z "$(alive "$@")" ] && return 0
    sleep 0.1
  done
  for pid in $(alive "$@"); do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 20); do  # KILL is not instant either: gone before the next group starts
    [ -z "$(alive "$@")" ] && return 0
    sleep 0.1
  done
}
RAYLETS="" GCS="" REST=""
for pid in $PIDS; do
  case "$(ps -o args= -p "$pid" 2>/dev/null)" in
    *raylet/raylet*) RAYLETS="$RAYLETS $pid" ;;
    *gcs_server*) GCS="$GCS $pid" ;;
    *) REST="$REST $pid" ;;
  esac
done
# shellcheck disable=SC2086
stop_group $RAYLETS
# shellcheck disable=SC2086
stop_group $REST
# shellcheck disable=SC2086
stop_group $GCS
rm -f "$STATE"
echo "stopped the Ray head on port $RAY_HEAD_PORT (pids: ${PIDS:-none})"
