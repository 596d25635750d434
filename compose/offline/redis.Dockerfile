# Offline stand-in for the official redis image (scripts/compose-smoke.sh): the local Debian
# bookworm base already carries redis-server and redis-tools (installed host-side by debootstrap).
ARG BASE
FROM ${BASE}
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /data && chown redis:redis /data
VOLUME /data
WORKDIR /data
EXPOSE 6379
CMD ["docker-entrypoint.sh", "redis-server"]
