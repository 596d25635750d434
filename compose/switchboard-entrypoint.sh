#!/bin/sh
# Entrypoint of the Switchboard image (Dockerfile, runtime stage): runs its arguments after
# making sure the shared secrets are set.
#
# SB_JWT_SECRET and SB_CLUSTER_SECRET given in the environment (e.g. from an .env file next to
# docker-compose.yml) are used as they are. When one is empty and the secrets directory is
# mounted (docker-compose.yml mounts the named volume `secrets` there in every Switchboard
# service), the first container to start generates a random 48-hex-digit secret into it and
# every other container reads the same one: no two deployments share a secret, and nobody
# has to pick one for a demo. `docker compose down -v` forgets them. Without the directory
# the variable stays empty and the service refuses to start (outside dev mode).
set -eu
dir="${SB_SECRETS_DIR:-/var/lib/switchboard/secrets}"
for name in SB_JWT_SECRET SB_CLUSTER_SECRET; do
    eval "value=\${$name:-}"
    if [ -z "$value" ] && [ -d "$dir" ] && [ -w "$dir" ]; then
        file="$dir/$name"
        if [ ! -s "$file" ]; then
            # Written aside, then linked into place: link(2) fails if another container won
            # the race, and then everyone reads the winner's secret.
            tmp="$(mktemp "$dir/.new.XXXXXX")"
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$tmp"
            ln "$tmp" "$file" 2>/dev/null || true
            rm -f "$tmp"
        fi
        value="$(cat "$file")"
        export "$name=$value"
    fi
done
exec "$@"
