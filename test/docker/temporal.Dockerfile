# Stands in for temporalio/server:1.32.2 and temporalio/admin-tools:1.32.2 (test/compose.test.ts):
# the server and its sql tool built from the Go module (`node scripts/setup.mjs --test`,
# .cache/temporal-1.32.2/bin) under the names and paths of the official images, with the
# module's PostgreSQL schemas where admin-tools keeps them, as user temporal (uid 1000).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --no-create-home --home-dir /etc/temporal temporal
COPY server /usr/local/bin/temporal-server
COPY sql /usr/local/bin/temporal-sql-tool
COPY schema /etc/temporal/schema
WORKDIR /etc/temporal
USER temporal
