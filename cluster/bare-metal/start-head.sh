#!/usr/bin/env bash
# Start the Ray head of a distcoagent cluster on this machine, with token authentication.
#
#   NODE_IP=10.0.0.5 cluster/bare-metal/start-head.sh            # then start-worker.sh on the others
#   NODE_IP=10.0.0.5 cluster/bare-metal/start-head.sh --block    # extra arguments go to `ray start`
#
# Environment (all optional):
#   NODE_IP        address the other nodes reach this one at (default: Ray's guess, the
#                  address of the default route). Use the private network's address.
#   RAY_PORT       GCS port (6379).      DASHBOARD_HOST  dashboard bind address (127.0.0.1).
#   NUM_CPUS       CPUs Ray may use here (default: all).
#   RESOURCES      custom resources as JSON, e.g. '{"node_a": 1}' (see start-worker.sh).
#   DASHBOARD_PORT (8265), OBJECT_MANAGER_PORT (8076), NODE_MANAGER_PORT (8077),
#   METRICS_EXPORT_PORT (8080), DASHBOARD_AGENT_PORT (52365), MIN_WORKER_PORT (10002),
#   MAX_WORKER_PORT (10999): fixed ports, so that firewall rules can name them.
#   RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH   the token; default ~/.ray/auth_token, created
#                  here if missing. Copy that file to every worker (and every client).
#
# Binding, as measured with Ray 2.60 on this project's machine (ss -ltnp): the GCS and the
# raylet listen on all interfaces (*:PORT), and Ray has no flag to narrow that; the
# dashboard (also the job API) honours --dashboard-host and stays on 127.0.0.1 here: reach
# it with `ssh -L 8265:127.0.0.1:8265 HEAD`. So put the nodes on a private network and let
# a firewall admit, from the cluster's nodes only: RAY_PORT, the object and node manager
# ports, the metrics port (for Prometheus), the worker port range and the dashboard agent
# port (defaults: 6379, 8076, 8077, 8080, 10002-10999, 52365).
# The token stops strangers from using the cluster; it does not encrypt traffic (Ray's
# TLS is separate: RAY_USE_TLS).
set -euo pipefail

RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_HOST="${DASHBOARD_HOST:-127.0.0.1}"

export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [[ ! -s "$token_file" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
      echo "start-head.sh: RAY_AUTH_TOKEN_PATH=$token_file is missing or empty" >&2
      exit 2
    fi
    ray get-auth-token --generate > /dev/null   # writes ~/.ray/auth_token
    echo "start-head.sh: created a token in $token_file; copy it to every worker and client" >&2
  fi
fi

args=(--head
      --port="$RAY_PORT"
      --dashboard-host="$DASHBOARD_HOST" --dashboard-port="${DASHBOARD_PORT:-8265}"
      --object-manager-port="${OBJECT_MANAGER_PORT:-8076}"
      --node-manager-port="${NODE_MANAGER_PORT:-8077}"
      --metrics-export-port="${METRICS_EXPORT_PORT:-8080}"
      --dashboard-agent-listen-port="${DASHBOARD_AGENT_PORT:-52365}"
      --min-worker-port="${MIN_WORKER_PORT:-10002}" --max-worker-port="${MAX_WORKER_PORT:-10999}"
      --disable-usage-stats)
if [[ -n "${NODE_IP:-}" ]]; then args+=(--node-ip-address="$NODE_IP"); fi
if [[ -n "${NUM_CPUS:-}" ]]; then args+=(--num-cpus="$NUM_CPUS"); fi
if [[ -n "${RESOURCES:-}" ]]; then args+=(--resources="$RESOURCES"); fi

exec ray start "${args[@]}" "$@"
