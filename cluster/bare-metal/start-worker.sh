#!/usr/bin/env bash
# Join this machine to a distcoagent Ray cluster as a worker node, with token authentication.
#
#   HEAD_ADDRESS=10.0.0.5:6379 NODE_IP=10.0.0.6 cluster/bare-metal/start-worker.sh
#   HEAD_ADDRESS=10.0.0.5:6379 RESOURCES='{"node_b": 1}' cluster/bare-metal/start-worker.sh
#
# Environment:
#   HEAD_ADDRESS   (required) the head's NODE_IP:RAY_PORT.
#   NODE_IP        this node's address on the cluster's network (default: Ray's guess).
#   NUM_CPUS       CPUs Ray may use here (default: all).
#   RESOURCES      custom resources as JSON, e.g. '{"node_b": 1}': a spec's
#                  [ray] resources = { act = { node_b = 1 } } then places coagent act here.
#   RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH   the head's token; default ~/.ray/auth_token
#                  (copy the head's file). Without RAY_AUTH_MODE=token (set here) a worker
#                  is refused by the head after about 20 s with an AuthenticationError.
#   OBJECT_MANAGER_PORT, NODE_MANAGER_PORT, METRICS_EXPORT_PORT, DASHBOARD_AGENT_PORT,
#   MIN_WORKER_PORT, MAX_WORKER_PORT: as in start-head.sh.
#
# Binding: as on the head (see start-head.sh), Ray listens on all interfaces; firewall the
# same fixed ports to the cluster's nodes.
set -euo pipefail

: "${HEAD_ADDRESS:?set HEAD_ADDRESS=HEAD_IP:PORT, e.g. 10.0.0.5:6379}"

export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [[ ! -s "$token_file" ]]; then
    echo "start-worker.sh: no token: copy the head's ~/.ray/auth_token to $token_file," \
         "or set RAY_AUTH_TOKEN" >&2
    exit 2
  fi
fi

args=(--address="$HEAD_ADDRESS"
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
