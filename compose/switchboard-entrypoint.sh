#!/bin/sh
# Entrypoint of the Switchboard image (Dockerfile, runtime stage): runs its arguments after
# setting the service's credentials from its own volumes. docker-compose.yml also mounts this
# file into the Redis and Sentinel containers, which run it for their own Redis secrets only
# (SB_SECRETS below), before their own start script and in their healthcheck.
#
# Cluster credentials and client-token keys (docs/compose.md, "Credentials"): the one-shot
# service `keys` (switchboard-keys) writes each service's own files into its volume
# `auth-<role>`, which the service alone mounts, read-only, at SB_AUTH_DIR
# (/var/lib/switchboard/auth). From there this script sets, unless already set:
#   SB_SERVICE_SECRET, SB_CALLER_KEYS  the service's own credential and every role's SHA-256
#                                      (per-service mode), unless SB_CLUSTER_SECRET is given:
#                                      then the shared mode, that one secret everywhere;
#   SB_JWT_PUBLIC_KEY_FILE             the Ed25519 key that verifies client tokens, and
#   SB_JWT_PRIVATE_KEY_FILE            the one that mints them (in the registry's volume only),
#                                      unless SB_JWT_SECRET is given: then HS256 with it.
# An empty SB_JWT_SECRET or SB_CLUSTER_SECRET (compose passes the host's, usually unset) is
# removed from the environment, so no service even sees the name.
#
# SB_SECRETS: names of secrets to read from, or generate into, the directory SB_SECRETS_DIR
# (default /var/lib/switchboard/secrets) when they are empty: the first container generates a
# random 48-hex-digit value and every other reads the same. Only the Redis and Sentinel
# containers use it, for the Redis tier's own secrets (SB_REDIS_PASSWORD, the operators' admin
# password, and the replicas', Sentinels' and services' Sentinel users' passwords) in their
# volume `redis-secrets`: no Switchboard container ever sees them. When SB_REDIS_PASSWORD is
# set at the end, it is also exported as REDISCLI_AUTH, so `switchboard-entrypoint redis-cli
# ...` in a Redis or Sentinel container authenticates.
#
# Redis credentials of a Switchboard service: its own Redis ACL user's password and the
# Sentinels' client password are never generated here. The Redis containers write them into
# the service's own volume `redis-auth-<service>` (compose/redis-auth.sh), which the service
# mounts read-only at SB_REDIS_AUTH_DIR (/var/lib/switchboard/redis); an empty
# SB_REDIS_PASSWORD / SB_REDIS_SENTINEL_PASSWORD is read from there.
#
# Run as root, it hands a root-owned secrets directory and the files it writes to
# SB_SECRETS_OWNER (default: the Switchboard image's user, uid 10001 in the Dockerfile) with
# modes 700/600. The Redis and Sentinel containers run it as root with SB_SECRETS_OWNER=0:0:
# their volume is theirs alone.
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
# The message service's key on the object store (compose/garage-setup.sh writes it into its
# own volume `s3-message-service`, mounted read-only at SB_S3_AUTH_DIR): an empty
# SB_S3_ACCESS_KEY_ID / SB_S3_SECRET_ACCESS_KEY is read from there.
s3_auth="${SB_S3_AUTH_DIR:-/var/lib/switchboard/s3}"
for name in SB_S3_ACCESS_KEY_ID SB_S3_SECRET_ACCESS_KEY; do
    eval "value=\${$name:-}"
    if [ -z "$value" ] && [ -r "$s3_auth/$name" ]; then
        value="$(cat "$s3_auth/$name")"
        export "$name=$value"
    fi
done
auth="${SB_AUTH_DIR:-/var/lib/switchboard/auth}"
if [ -z "${SB_CLUSTER_SECRET:-}" ]; then
    unset SB_CLUSTER_SECRET
    for name in SB_SERVICE_SECRET SB_CALLER_KEYS; do
        eval "value=\${$name:-}"
        if [ -z "$value" ] && [ -r "$auth/$name" ]; then
            value="$(cat "$auth/$name")"
            export "$name=$value"
        fi
    done
fi
if [ -z "${SB_JWT_SECRET:-}" ]; then
    unset SB_JWT_SECRET
    if [ -z "${SB_JWT_PUBLIC_KEY_FILE:-}" ] && [ -r "$auth/jwt-ed25519.pub.pem" ]; then
        export SB_JWT_PUBLIC_KEY_FILE="$auth/jwt-ed25519.pub.pem"
    fi
    if [ -z "${SB_JWT_PRIVATE_KEY_FILE:-}" ] && [ -r "$auth/jwt-ed25519.pem" ]; then
        export SB_JWT_PRIVATE_KEY_FILE="$auth/jwt-ed25519.pem"
    fi
fi
for name in ${SB_SECRETS:-}; do
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
