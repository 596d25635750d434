#!/bin/sh
# docker-entrypoint.sh of the offline Redis image (built by scripts/compose-smoke.sh), standing
# in for the official redis image's: docker-compose.yml runs
#   docker-entrypoint.sh redis-server /data/redis.conf ...
# As root it hands /data to the redis user and drops privileges, like the official one.
set -e
if [ "$(id -u)" = 0 ]; then
    find /data \! -user redis -exec chown redis:redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
