#!/bin/sh
# The ACL users of a Redis or Sentinel container in docker-compose.yml, with their passwords.
#
#   switchboard-redis-auth redis     # prints compose/redis-users.acl's users, for a Redis config
#   switchboard-redis-auth sentinel  # prints compose/sentinel-users.acl's users, for a Sentinel
#
# Mounted into every Redis and Sentinel container (as /usr/local/bin/switchboard-redis-auth)
# and run by its start command, after compose/switchboard-entrypoint.sh has read (or the
# first container has generated) the Redis tier's own secrets from the `redis-secrets`
# volume: SB_REDIS_PASSWORD (the operators' `default` user of every Redis and Sentinel),
# SB_REDIS_REPLICA_PASSWORD (`sb-replica`, masterauth), SB_REDIS_SENTINEL_AUTH_PASSWORD
# (`sb-sentinel`, the Sentinels' user on Redis) and SB_REDIS_CLIENT_PASSWORD (`sb-client`, the
# services' user on the Sentinels).
#
# The users files (generated from test-support's service_key_families, no passwords in them)
# get `#<sha256>` of each password after `on`, so no config holds a service's password.
#
# Redis mode also hands each service its credentials: every Redis container mounts the
# service's own volume `redis-auth-<service>` at $SB_REDIS_USERS_DIR/<service>, and this
# script makes sure it holds SB_REDIS_PASSWORD (the service's own, generated once, like every
# secret here: written aside and linked into place, so racing containers agree) and
# SB_REDIS_SENTINEL_PASSWORD (sb-client's), owned by the Switchboard image's user (uid 10001)
# with modes 700/600. The service mounts only its own volume (read-only), so no service
# container holds another's Redis password, the admin password or the Sentinels'.
set -eu
mode="${1:?usage: switchboard-redis-auth redis|sentinel}"
users_dir="${SB_REDIS_USERS_DIR:-/var/lib/switchboard/redis-users}"
owner="${SB_SECRETS_OWNER_SERVICES:-10001:10001}"

die() { echo "switchboard-redis-auth: $*" >&2; exit 1; }

# new_secret FILE: FILE holds a random 48-hex-digit secret (generated unless it has one).
new_secret() {
    if [ ! -s "$1" ]; then
        tmp="$(mktemp "$(dirname "$1")/.new.XXXXXX")"
        od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$tmp"
        ln "$tmp" "$1" 2>/dev/null || true
        rm -f "$tmp"
    fi
}

# put FILE VALUE: FILE holds exactly VALUE (replaced atomically when it differs).
put() {
    if [ "$(cat "$1" 2>/dev/null || true)" != "$2" ]; then
        tmp="$(mktemp "$(dirname "$1")/.new.XXXXXX")"
        printf '%s' "$2" > "$tmp"
        mv -f "$tmp" "$1"
    fi
}

hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# service_password SERVICE: the service's Redis password, its volume prepared.
service_password() {
    dir="$users_dir/$1"
    [ -d "$dir" ] || die "no $dir: mount the volume redis-auth-$1 there (docker-compose.yml)"
    chown "$owner" "$dir"
    chmod 700 "$dir"
    new_secret "$dir/SB_REDIS_PASSWORD"
    put "$dir/SB_REDIS_SENTINEL_PASSWORD" "$SB_REDIS_CLIENT_PASSWORD"
    chown "$owner" "$dir/SB_REDIS_PASSWORD" "$dir/SB_REDIS_SENTINEL_PASSWORD"
    chmod 600 "$dir/SB_REDIS_PASSWORD" "$dir/SB_REDIS_SENTINEL_PASSWORD"
    cat "$dir/SB_REDIS_PASSWORD"
}

case "$mode" in
    redis) file=/etc/switchboard/redis-users.acl ;;
    sentinel) file=/etc/switchboard/sentinel-users.acl ;;
    *) die "unknown mode $mode (redis or sentinel)" ;;
esac
[ -r "$file" ] || die "no users file $file (mount compose/${file##*/})"
for name in SB_REDIS_REPLICA_PASSWORD SB_REDIS_SENTINEL_AUTH_PASSWORD SB_REDIS_CLIENT_PASSWORD; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || die "no $name (the redis-secrets volume missing?)"
done

# Each line: `user <name> on <rules...>`; comments and blank lines are skipped.
while read -r keyword name state rules; do
    case "$keyword" in user) ;; *) continue ;; esac
    [ "$state" = on ] || die "$file: user $name is not 'on'"
    case "$mode:$name" in
        redis:sb-replica) password="$SB_REDIS_REPLICA_PASSWORD" ;;
        redis:sb-sentinel) password="$SB_REDIS_SENTINEL_AUTH_PASSWORD" ;;
        redis:sb-*) password="$(service_password "${name#sb-}")" ;;
        sentinel:sb-client) password="$SB_REDIS_CLIENT_PASSWORD" ;;
        *) die "$file: no password for user $name" ;;
    esac
    [ -n "$password" ] || die "empty password for user $name"
    printf 'user %s on #%s %s\n' "$name" "$(hash "$password")" "$rules"
done < "$file"
