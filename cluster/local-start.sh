#!/usr/bin/env bash
# Start a single-node Ray head on this machine, for `ray job submit`.
#
#   cluster/local-start.sh                      # prints the address to submit to
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       python jobs/train.py --data synthetic:tiny --workers 2 --out runs/job-train
#   cluster/local-stop.sh
#
# Environment (all optional): RAY_PORT (GCS port, default: a free one), RAY_DASHBOARD_PORT
# (default 8265), RAY_NUM_CPUS, RAY_NUM_GPUS, RAY_OBJECT_STORE_BYTES (default 512 MiB),
# RAY_HEAD_STATE (where the head's ports and pids are recorded, default runs/ray-head.env).
#
# Network: the dashboard (and the Jobs API behind it) listens on 127.0.0.1 only. Ray's
# other ports — GCS, raylet, object manager, client server, agents, worker ports — bind
# to all interfaces (Ray has no flag to restrict them); on a machine reachable from a
# network, firewall them or run inside a private network namespace.
#
# Authentication: RAY_AUTH_MODE is set explicitly (default "disabled"). Left unset, a
# previous local `ray.init()` may have written ~/.ray/auth_token, and `ray start` would
# then silently enable token auth and `ray job submit` would fail.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$REPO/.venv/bin/ray" ]; then
  # the job's `python` is resolved from the head's PATH: make it the project's interpreter
  export PATH="$REPO/.venv/bin:$PATH"
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}"   # torch.distributed over loopback

STATE="${RAY_HEAD_STATE:-$REPO/runs/ray-head.env}"
if [ -f "$STATE" ]; then
  echo "a head started by this script is recorded in $STATE; run cluster/local-stop.sh first" >&2
  exit 1
fi

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
PORT="${RAY_PORT:-$(free_port)}"
DASH="${RAY_DASHBOARD_PORT:-8265}"
TEMP_DIR="/tmp/ray-trudist-$PORT"   # short: Ray's unix sockets live under it

args=(--head --port="$PORT"
      --dashboard-host=127.0.0.1 --dashboard-port="$DASH"
      --ray-client-server-port="$(free_port)"
      --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)"
      --runtime-env-agent-port="$(free_port)" --metrics-export-port="$(free_port)"
      --node-manager-port="$(free_port)" --object-manager-port="$(free_port)"
      --object-store-memory="${RAY_OBJECT_STORE_BYTES:-536870912}"
      --temp-dir="$TEMP_DIR" --disable-usage-stats)
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus="$RAY_NUM_CPUS")
[ -n "${RAY_NUM_GPUS:-}" ] && args+=(--num-gpus="$RAY_NUM_GPUS")

ray start "${args[@]}"

# record exactly the processes of this head (their command lines name its temp dir), so
# local-stop.sh ends them by pid and never touches another Ray on the machine
PIDS="$(ps -eo pid=,args= | awk -v d="$TEMP_DIR" 'index($0, d) && !/awk/ {print $1}' | tr '\n' ' ')"
mkdir -p "$(dirname "$STATE")"
cat > "$STATE" <<STATE_EOF
RAY_HEAD_PORT=$PORT
RAY_DASHBOARD_PORT=$DASH
RAY_HEAD_TEMP_DIR=$TEMP_DIR
RAY_HEAD_PIDS="$PIDS"
STATE_EOF

echo
echo "Ray head is up (GCS 127.0.0.1:$PORT, auth mode $RAY_AUTH_MODE)."
echo "  dashboard:  http://127.0.0.1:$DASH"
echo "  submit:     export RAY_AUTH_MODE=$RAY_AUTH_MODE"
echo "              ray job submit --address http://127.0.0.1:$DASH --working-dir . -- python jobs/train.py --data synthetic:tiny"
echo "  stop:       cluster/local-stop.sh"
echo "  note: only the dashboard is bound to 127.0.0.1; Ray's other ports listen on all interfaces."
