#!/bin/sh
# Starts docker-compose.yml's Temporal server (the public temporalio/server image or a local
# one with temporal-server on PATH): the PostgreSQL password from its secret file, the address
# the server's services announce to each other (this container's), then config.yaml.
set -eu
POSTGRES_PASSWORD=$(cat "${POSTGRES_PASSWORD_FILE:?names the file holding the PostgreSQL password}")
TEMPORAL_BROADCAST_ADDRESS=${TEMPORAL_BROADCAST_ADDRESS:-$(hostname -i | awk '{print $1}')}
export POSTGRES_PASSWORD TEMPORAL_BROADCAST_ADDRESS
# No authorizer is configured: the frontend is reachable on the compose network and on the
# host's loopback only (docker-compose.yml), never publish it wider.
exec temporal-server --config-file /etc/cloudgate/temporal/config.yaml --allow-no-auth start
