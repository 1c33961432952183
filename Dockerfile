# cloudgate's image: the API (default command) and the worker (`node dist/workers/main.js`),
# compiled JavaScript on Node 20, run as an unprivileged user. docker-compose.yml builds it;
# README "Production with Docker Compose" says how to run it.
#
# `deps` installs every npm dependency (the native ones — better-sqlite3, @unraid/libvirt —
# built here, for this image's Node and glibc); `prod-deps` drops the dev dependencies from it;
# `build` compiles the TypeScript (npm run build) and bundles the workflow code once (no
# webpack or swc at worker start). The last stage is the runtime: Node, libvirt's client
# library, the production dependencies and the compiled code.
#
# NODE_IMAGE and NODE_RUNTIME_IMAGE default to the public Node images; a site without
# registry access names local ones (test/compose.test.ts does). A site whose HTTPS goes
# through an inspecting proxy hands its CA bundle to npm as the build secret
# `ca-certificates` (docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt);
# a secret mount is never part of a layer. BuildKit is needed (docker compose, or
# DOCKER_BUILDKIT=1 with docker build / COMPOSE_DOCKER_CLI_BUILD=1 with docker-compose 1.x).
ARG NODE_IMAGE=node:20-bookworm
ARG NODE_RUNTIME_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS deps
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ pkg-config libvirt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# npm reaches the registry here and in the prune below (a lock file without `resolved` URLs is
# looked up), both through the npm cache mount.
RUN --mount=type=secret,id=ca-certificates,target=/run/secrets/ca-certificates \
    --mount=type=cache,target=/root/.npm \
    if [ -s /run/secrets/ca-certificates ]; then \
      export NODE_EXTRA_CA_CERTS=/run/secrets/ca-certificates npm_config_cafile=/run/secrets/ca-certificates; \
    fi \
 && npm ci --no-audit --no-fund

# The production dependencies: from the manifests alone, so a source change does not redo it.
# The Temporal core bridge ships a binary per platform: keep this one's.
FROM deps AS prod-deps
RUN --mount=type=secret,id=ca-certificates,target=/run/secrets/ca-certificates \
    --mount=type=cache,target=/root/.npm \
    if [ -s /run/secrets/ca-certificates ]; then \
      export NODE_EXTRA_CA_CERTS=/run/secrets/ca-certificates npm_config_cafile=/run/secrets/ca-certificates; \
    fi \
 && npm prune --omit=dev --prefer-offline --no-audit --no-fund \
 && find node_modules/@temporalio/core-bridge/releases -mindepth 1 -maxdepth 1 ! -name "$(uname -m)-unknown-linux-gnu" -exec rm -rf {} +

FROM deps AS build
COPY . .
RUN npm run build \
 && node dist/workers/bundle-workflows.js dist/workflow-bundle.js

FROM ${NODE_RUNTIME_IMAGE}
# libvirt's client library: @unraid/libvirt's binding links to it (the libvirt cloud adapter).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libvirt0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin cloudgate \
 && mkdir -p /data \
 && chown cloudgate:cloudgate /data \
 && chmod 700 /data
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=prod-deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# /data: the store, generated keys and the admin token (a volume; keep it private).
ENV NODE_ENV=production \
    CLOUDGATE_DATA_DIR=/data \
    CLOUDGATE_API_HOST=0.0.0.0 \
    CLOUDGATE_API_PORT=8080 \
    CLOUDGATE_WORKFLOW_BUNDLE=/app/dist/workflow-bundle.js
VOLUME ["/data"]
USER cloudgate
EXPOSE 8080 9464
# The API's /healthz (store and Temporal answer); the compose file gives the worker its own check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["node", "dist/workers/healthcheck.js", "api"]
CMD ["node", "dist/api/main.js"]
