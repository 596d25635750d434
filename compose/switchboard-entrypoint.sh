#!/bin/sh
# Entrypoint of the Switchboard image (Dockerfile, runtime stage): runs its arguments after
# making sure the shared secrets are set. docker-compose.yml also mounts this file into the
# Redis and Sentinel containers, which run it for their own Redis secrets only (SB_SECRETS
# below), before their own start script and in their healthchecks.
#
# SB_JWT_SECRET and SB_CLUSTER_SECRET given in the environment (e.g. from an .env file next to
# docker-compose.yml) are used as they are. When one is empty and the secrets directory is
# mounted (docker-compose.yml mounts the named volume `secrets` there in every Switchboard
# service), the first container to start generates a random 48-hex-digit secret into it and
# every other container reads the same one: no two deployments share a secret, and nobody has
# to pick one for a demo. `docker compose down -v` forgets them. Without the directory the
# variable stays empty and the service refuses to start (outside dev mode; the Redis
# containers always refuse).
#
# SB_SECRETS: the names to handle (default: SB_JWT_SECRET and SB_CLUSTER_SECRET). The Redis and
# Sentinel containers list their own (SB_REDIS_PASSWORD, the operators' admin password, and
# the replicas', Sentinels' and services' Sentinel users' passwords) and mount their own
# volume, `redis-secrets`, here instead of `secrets`: no Switchboard container ever sees them.
# When SB_REDIS_PASSWORD is set at the end, it is also exported as REDISCLI_AUTH, so
# `switchboard-entrypoint redis-cli ...` in a Redis or Sentinel container authenticates.
#
# Redis credentials of a Switchboard service: its own Redis ACL user's password and the
# Sentinels' client password are never generated here. The Redis containers write them into
# the service's own volume `redis-auth-<service>` (compose/redis-auth.sh), which the service
# mounts read-only at SB_REDIS_AUTH_DIR (/var/lib/switchboard/redis); an empty
# SB_REDIS_PASSWORD / SB_REDIS_SENTINEL_PASSWORD is read from there.
#
# Run as root, it hands a root-owned directory and the files it writes to SB_SECRETS_OWNER
# (default: the Switchboard image's user, uid 10001 in the Dockerfile) with modes 700/600, as
# if that user had made them. The Redis and Sentinel containers run it as root with
# SB_SECRETS_OWNER=0:0: their volume is theirs alone. (The Switchboard image creates the
# `secrets` directory as uid 10001, and a new named volume takes that owner.)
set -eu
dir="${SB_SECRETS_DIR:-/var/lib/switchboard/secrets}"
owner="${SB_SECRETS_OWNER:-10001:10001}"
root=false
[ "$(id -u)" != 0 ] || root=true
if $root && [ -d "$dir" ] && [ "$(stat -c %u "$dir")" = 0 ]; then
    chown "$owner" "$dir" && chmod 700 "$dir" || true
fi
redis_auth="${SB_REDIS_AUTH_DIR:-/var/lib/switchboard/redis}"
for name in SB_REDIS_PASSWORD SB_REDIS_SENTINEL_PASSWORD; do
    eval "value=\${$name:-}"
    if [ -z "$value" ] && [ -r "$redis_auth/$name" ]; then
        value="$(cat "$redis_auth/$name")"
        export "$name=$value"
    fi
done
for name in ${SB_SECRETS:-SB_JWT_SECRET SB_CLUSTER_SECRET}; do
    eval "value=\${$name:-}"
    if [ -z "$value" ] && [ -d "$dir" ] && [ -w "$dir" ]; then
        file="$dir/$name"
        if [ ! -s "$file" ]; then
            # Written aside, then linked into place: link(2) fails if another container won
            # the race, and then everyone reads the winner's secret.
            tmp="$(mktemp "$dir/.new.XXXXXX")"
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$tmp"
            if $root; then chown "$owner" "$tmp"; fi
            ln "$tmp" "$file" 2>/dev/null || true
            rm -f "$tmp"
        fi
        value="$(cat "$file")"
        export "$name=$value"
    fi
done
if [ -n "${SB_REDIS_PASSWORD:-}" ] && [ -z "${REDISCLI_AUTH:-}" ]; then
    export REDISCLI_AUTH="$SB_REDIS_PASSWORD"
fi
exec "$@"
