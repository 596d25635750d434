# Offline stand-in for the official postgres image (scripts/compose-smoke.sh): the local Debian
# bookworm base already carries PostgreSQL (installed host-side by debootstrap).
ARG BASE
FROM ${BASE}
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
