# Stands in for node:20-bookworm and node:20-bookworm-slim where no image registry is reachable
# (test/compose.test.ts): the Debian base made by debootstrap, plus this machine's own Node 20
# (node, its headers, npm, packed from /usr by test/peers/docker.ts; Debian 12 itself ships
# Node 18). The headers under /usr/include/node let node-gyp build native modules offline.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ADD node.tar.gz /
ENV npm_config_nodedir=/usr
CMD ["node"]
