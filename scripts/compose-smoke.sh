#!/usr/bin/env bash
# Runs docker-compose.yml for real, offline, and checks it (issue 10; docs/compose.md):
#
#   1. installs docker.io, docker-compose and debootstrap if missing; starts dockerd
#      (--storage-driver=vfs --iptables=false) if none runs, and stops it again at the end;
#   2. builds the images that cannot be pulled here (no image registry is reachable):
#      a Debian bookworm base by debootstrap (packages installed host-side: with
#      --iptables=false containers have no route out), Redis and PostgreSQL on it, nginx on a
#      Debian sid debootstrap (compose.conf needs nginx >= 1.27.3), tansu as the broker, and
#      switchboard:local from the Dockerfile's own runtime stage fed with release binaries
#      built on this host;
#   3. runs docker-compose.yml + compose.demo.yml (the one-command demo: dev mode in the
#      registry) + compose.offline.yml (which only swaps those images and the broker) with
#      `up -d --scale socket-server=3 --scale registry=2 --scale socket-manager=2`, then
#      compose/smoke_client.py checks assignment, chat across replicas, a replica stop, a
#      Redis master stop (Sentinel failover, with Redis AUTH on and every service as its own
#      Redis ACL user), what the public nginx refuses, that Redis and the Sentinels refuse
#      clients without the generated password (NOAUTH), that a service's Redis user gets
#      NOPERM outside its key families (the socket server on the membership mirror) and its
#      Sentinel user on SENTINEL MONITOR/REMOVE/FAILOVER, the per-service credentials (the
#      socket server holds no token-minting key and no other role's secret: a forged token is
#      refused, its credential gets 403 on the membership route), a socket manager stop, a
#      registry replica added at run time and found by nginx through Docker's DNS, 5,000 idle
#      WebSockets held through the three socket servers (from 25 source addresses added to the
#      compose network's bridge: nginx allows 256 connections per address), and that nginx's
#      limit_conn refuses one address's excess connections (429) while another address gets
#      through; and app backends (issue 26): with a server API key minted here (SB_API_KEYS),
#      a webhook endpoint registered through nginx at the demo's push-gateway-sink receives a
#      signed `message.created` for a message posted through the server API, and an offline
#      member with a push device gets a signed push;
#   4. `down -v` must leave no container, network or volume of the project.
#
# Traffic goes only to the containers it starts and to loopback (plus the Debian mirror for
# debootstrap, like apt). Every wait is bounded. The rootfs tarballs are cached in
# ~/.cache/switchboard/compose (SB_SMOKE_CACHE), so a rerun skips debootstrap.
# Environment: CARGO_TARGET_DIR (where the release binaries are built, default target/),
# SB_SMOKE_BIN_DIR (use the release binaries there instead of building them),
# SB_SMOKE_KEEP=1 (leave the stack running after a failure, for a look).
# SB_SMOKE_MIN_FREE_GB=9 (the free disk under Docker's root the stack needs; checked first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$SECONDS
log() { echo "compose-smoke [$((SECONDS - START))s] $*"; }
# The reason is said again at the very end, after the containers' logs: CI keeps only the tail.
FAILED_BECAUSE=""
die() { FAILED_BECAUSE="$*"; log "FAILED: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root or sudo (dockerd, debootstrap)"
    SUDO="sudo"
fi
CACHE="${SB_SMOKE_CACHE:-${HOME:-/root}/.cache/switchboard/compose}"
MIRROR="${SB_SMOKE_MIRROR:-http://deb.debian.org/debian}"
PROJECT=sbsmoke
WORK="$(mktemp -d /tmp/compose-smoke.XXXXXX)"
mkdir -p "$CACHE"

# ---- 1. packages and dockerd ------------------------------------------------------------------
need=()
[ -x /usr/bin/dockerd ] || command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The docker CLI of the docker.io package (matches its daemon; another CLI on PATH may lack
# the builder this needs).
DOCKER_BIN=/usr/bin/docker; [ -x "$DOCKER_BIN" ] || DOCKER_BIN="$(command -v docker)"
DOCKER="$SUDO $DOCKER_BIN"
# A server API key with every scope (docs/server-api.md): the stack gets its entry (hash only)
# through an env file (JSON is no shell word), the client the key (step 12 of smoke_client.py).
SMOKE_API_KEY="sbk_smoke_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
SMOKE_API_KEY_SHA="$(printf '%s' "$SMOKE_API_KEY" | sha256sum | cut -d' ' -f1)"
printf 'SB_API_KEYS=[{"id":"smoke","sha256":"%s","scopes":["messages:write","conversations:write","read","users:disconnect","webhooks:manage"],"rate_per_sec":0}]\n' \
    "$SMOKE_API_KEY_SHA" >"$WORK/smoke.env"
COMPOSE="$SUDO env SB_PUBLIC_PORT=PORT SB_S3_PUBLIC_PORT=S3PORT docker-compose -p $PROJECT --env-file $WORK/smoke.env -f $ROOT/docker-compose.yml -f $ROOT/compose.demo.yml -f $ROOT/compose.offline.yml"
export DOCKER_BUILDKIT=1

DOCKERD_PID=""
STACK_UP=0
cleanup() {
    status=$?
    set +e
    if [ "$STACK_UP" = 1 ]; then
        if [ "$status" -ne 0 ]; then
            log "logs of the failed run (last lines per container):"
            $COMPOSE logs --no-color --tail=25 2>&1 | tail -n 400
        fi
        if [ "$status" -ne 0 ] && [ "${SB_SMOKE_KEEP:-0}" = 1 ]; then
            log "SB_SMOKE_KEEP=1: leaving the stack (and dockerd) running"
            exit "$status"
        fi
        timeout 120 $COMPOSE down -v --remove-orphans >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started"
        $SUDO kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 60); do $SUDO kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        $SUDO kill -KILL "$DOCKERD_PID" 2>/dev/null
    fi
    $SUDO rm -rf "$WORK"
    [ -z "$FAILED_BECAUSE" ] || log "FAILED (said above, before the logs): $FAILED_BECAUSE"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! $DOCKER info >/dev/null 2>&1; then
    log "starting dockerd (vfs, no iptables)"
    $SUDO bash -c "dockerd --storage-driver=vfs --iptables=false >'$WORK/dockerd.log' 2>&1 & echo \$! >'$WORK/dockerd.pid'"
    DOCKERD_PID="$(cat "$WORK/dockerd.pid")"
    for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
    $DOCKER info >/dev/null 2>&1 || { tail -n 30 "$WORK/dockerd.log"; die "dockerd did not start"; }
fi
# A leftover of an interrupted run.
timeout 120 $COMPOSE down -v --remove-orphans >/dev/null 2>&1 || true
# vfs copies a whole image for every image and container, so stale images from earlier runs
# (each rebuild of switchboard:local leaves the previous one dangling) and the build cache
# add up to gigabytes; neither is reused. Then make sure the stack fits: about 12 switchboard
# containers plus Redis, PostgreSQL, the broker and nginx took 8.8 GB above the images under vfs (measured). Without this
# check a full disk shows up as "no space left on device" half-way through `up`.
$DOCKER image prune -f >/dev/null 2>&1 || true
$DOCKER builder prune -af >/dev/null 2>&1 || true
DOCKER_ROOT="$($DOCKER info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"
NEED_KB=$(( ${SB_SMOKE_MIN_FREE_GB:-9} * 1024 * 1024 ))
free_kb="$(df -Pk "$DOCKER_ROOT" | awk 'NR == 2 {print $4}')"
if [ "${free_kb:-0}" -lt "$NEED_KB" ]; then
    df -h "$DOCKER_ROOT" >&2
    die "only $((free_kb / 1024)) MB free under $DOCKER_ROOT; the compose stack needs ${SB_SMOKE_MIN_FREE_GB:-9} GB under vfs (SB_SMOKE_MIN_FREE_GB). Free disk (e.g. old cargo target dirs) and rerun"
fi

# ---- 2. the release binaries (host build) -------------------------------------------------------
# The packages' binaries, switchboard-keys (the registry package's; the `keys` service) and
# push-gateway-sink (the webhook-dispatcher package's; compose.demo.yml's sink).
PACKAGES="registry socket-server socket-manager health-checker message-service webhook-dispatcher"
BINS="$PACKAGES switchboard-keys push-gateway-sink"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="${SB_SMOKE_BIN_DIR:-}"
if [ -z "$BIN_DIR" ]; then
    log "cargo build --release ($PACKAGES) into $TARGET_DIR"
    packages=(); for b in $PACKAGES; do packages+=(-p "$b"); done
    CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --quiet "${packages[@]}"
    BIN_DIR="$TARGET_DIR/release"
fi
TANSU="${HOME:-/root}/.cache/switchboard/tansu/bin/tansu"
[ -x "$TANSU" ] || die "no tansu at $TANSU (scripts/install-deps.sh builds it)"
GARAGE="${SWITCHBOARD_GARAGE:-${HOME:-/root}/.cache/switchboard/garage/bin/garage}"
[ -x "$GARAGE" ] || die "no garage at $GARAGE (scripts/install-deps.sh builds it)"

# ---- 3. base images -------------------------------------------------------------------------
# Docker runs on vfs here, which copies a whole image for every container (and every layer
# for every image): the images are single-layer imports, trimmed to what each one needs.
#
# rootfs_tar NAME SUITE PACKAGES: a debootstrap (minbase) tarball, cached by its inputs.
rootfs_tar() {
    local name="$1" suite="$2" include="$3"
    local key; key="$(echo "v1 $suite $include $MIRROR" | sha256sum | cut -c1-16)"
    local tarball="$CACHE/$name-$key.tar"
    if [ ! -s "$tarball" ]; then
        log "debootstrap $suite for $name (one time; cached in $CACHE)" >&2
        local dir="$WORK/debootstrap-$name"
        $SUDO timeout 900 debootstrap --variant=minbase --include="$include" "$suite" "$dir" "$MIRROR" \
            >"$WORK/debootstrap-$name.log" 2>&1 \
            || { tail -n 20 "$WORK/debootstrap-$name.log" >&2; die "debootstrap $suite failed"; }
        $SUDO umount "$dir/proc" 2>/dev/null || true
        $SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/proc/*
        $SUDO tar -C "$dir" -cf "$tarball.part" .
        $SUDO mv "$tarball.part" "$tarball"
        $SUDO rm -rf "$dir"
    fi
    echo "$tarball"
}
# The two debootstraps run side by side (mostly downloads).
rootfs_tar nginx sid nginx,curl,ca-certificates >"$WORK/sid-tar" &
sid_job=$!
BOOKWORM_TAR="$(rootfs_tar bookworm bookworm ca-certificates,curl,redis-server,redis-tools,postgresql,postgresql-client)"
wait "$sid_job" || die "building the sid rootfs failed"
SID_TAR="$(cat "$WORK/sid-tar")"

# offline_image TAG TARBALL "PACKAGES TO KEEP" CUSTOMIZE-FUNCTION [docker import --change ...]:
# unpacks the tarball, removes every package not needed by the ones kept (apt autoremove,
# offline), runs the function on the rootfs dir, and imports it. Skipped when an image with the
# same inputs exists already.
offline_image() {
    local tag="$1" tarball="$2" keep="$3" customize="$4"; shift 4
    local key; key="$( { echo "v2 $tarball $keep $*"; stat -c %s-%Y "$TANSU"; declare -f "$customize"; cat compose/offline/*; } | sha256sum | cut -c1-16)"
    if [ "$($DOCKER image inspect -f '{{ index .Config.Labels "switchboard.key" }}' "$tag" 2>/dev/null)" = "$key" ]; then
        return
    fi
    log "building $tag"
    local dir="$WORK/rootfs-${tag//[\/:]/-}"
    $SUDO mkdir -p "$dir"
    $SUDO tar -C "$dir" -xf "$tarball"
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$dir/usr/sbin/policy-rc.d" >/dev/null
    $SUDO chmod +x "$dir/usr/sbin/policy-rc.d"
    # postgresql-common protects postgresql-NN from autoremove; not here.
    $SUDO rm -f "$dir"/etc/apt/apt.conf.d/*autoremove-postgresql*
    # shellcheck disable=SC2046
    $SUDO chroot "$dir" apt-mark auto $($SUDO chroot "$dir" dpkg-query -W -f '${Package}\n') >/dev/null
    # shellcheck disable=SC2086
    $SUDO chroot "$dir" apt-mark manual $keep >/dev/null
    $SUDO chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -qq \
        -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false >/dev/null 2>&1 \
        || die "apt-get autoremove in the $tag rootfs failed"
    $SUDO rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/usr/share/locale/* "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* \
        "$dir"/var/log/*.log "$dir/usr/sbin/policy-rc.d"
    "$customize" "$dir"
    local changes=(--change "LABEL switchboard.key=$key")
    for c in "$@"; do changes+=(--change "$c"); done
    $SUDO tar -C "$dir" -c . | $DOCKER import "${changes[@]}" - "$tag" >/dev/null
    $SUDO rm -rf "$dir"
}
# Packages every image keeps (awk, getent and setpriv are used by the entrypoints).
ESSENTIAL="bash coreutils util-linux mawk libc-bin sed grep findutils"
no_customizing() { :; }
redis_rootfs() {
    $SUDO install -m 755 compose/offline/redis-entrypoint.sh "$1/usr/local/bin/docker-entrypoint.sh"
    $SUDO mkdir -p "$1/data"
    $SUDO chroot "$1" chown redis:redis /data
}
postgres_rootfs() {
    $SUDO install -m 755 compose/offline/postgres-entrypoint.sh "$1/usr/local/bin/docker-entrypoint.sh"
    $SUDO rm -rf "$1"/etc/postgresql/* "$1"/var/lib/postgresql/*
}
nginx_rootfs() {
    $SUDO install -m 644 compose/offline/nginx.conf "$1/etc/nginx/nginx.conf"
    $SUDO rm -f "$1"/etc/nginx/sites-enabled/*
    $SUDO mkdir -p "$1/usr/share/nginx/html" "$1/etc/nginx/conf.d"
    $SUDO ln -sf /dev/stdout "$1/var/log/nginx/access.log"
    $SUDO ln -sf /dev/stderr "$1/var/log/nginx/error.log"
}
broker_rootfs() {
    $SUDO install -m 755 "$TANSU" "$1/usr/local/bin/tansu"
    $SUDO mkdir -p "$1/var/lib/kafka/data"
}
# Garage at /garage, as in the upstream image (docker-compose.yml runs /garage).
garage_rootfs() {
    $SUDO install -m 755 "$GARAGE" "$1/garage"
    $SUDO mkdir -p "$1/var/lib/garage/meta" "$1/var/lib/garage/data"
}
offline_image switchboard-offline/base:local "$BOOKWORM_TAR" "$ESSENTIAL ca-certificates curl" no_customizing \
    'CMD ["bash"]'
offline_image switchboard-offline/redis:local "$BOOKWORM_TAR" "$ESSENTIAL redis-server redis-tools" redis_rootfs \
    'VOLUME /data' 'WORKDIR /data' 'CMD ["docker-entrypoint.sh", "redis-server"]'
offline_image switchboard-offline/postgres:local "$BOOKWORM_TAR" "$ESSENTIAL postgresql postgresql-client" postgres_rootfs \
    'ENV PGDATA=/var/lib/postgresql/data' 'VOLUME /var/lib/postgresql/data' \
    'ENTRYPOINT ["docker-entrypoint.sh"]'
offline_image switchboard-offline/nginx:local "$SID_TAR" "$ESSENTIAL nginx curl" nginx_rootfs \
    'CMD ["nginx", "-g", "daemon off;"]'
offline_image switchboard-offline/broker:local "$BOOKWORM_TAR" "$ESSENTIAL" broker_rootfs \
    'ENTRYPOINT ["tansu"]'
offline_image switchboard-offline/garage:local "$BOOKWORM_TAR" "$ESSENTIAL" garage_rootfs \
    "LABEL switchboard.garage=$(stat -c %s-%Y "$GARAGE")" 'ENTRYPOINT ["/garage"]' 'CMD ["server"]'
BASE=switchboard-offline/base:local
build() { # build TAG DOCKERFILE CONTEXT [ARGS...]
    local tag="$1" file="$2" context="$3"; shift 3
    $DOCKER build --quiet -t "$tag" -f "$file" "$@" "$context" >"$WORK/build.log" 2>&1 \
        || { tail -n 40 "$WORK/build.log"; die "docker build $tag failed"; }
}
mkdir -p "$WORK/bin/out"

# switchboard:local: the Dockerfile's runtime stage, binaries from the host build.
# Stripped: vfs copies the image for every container, and debug info is most of a binary.
for b in $BINS; do cp "$BIN_DIR/$b" "$WORK/bin/out/" && strip "$WORK/bin/out/$b"; done
printf 'FROM scratch\nCOPY out/ /out/\n' >"$WORK/bin/Dockerfile"
build switchboard-offline/binaries:local "$WORK/bin/Dockerfile" "$WORK/bin"
log "building switchboard:local (Dockerfile, target runtime)"
build switchboard:local Dockerfile . --target runtime \
    --build-arg SB_BINARIES=switchboard-offline/binaries:local --build-arg SB_RUNTIME_BASE="$BASE"

# ---- 4. the stack -------------------------------------------------------------------------------
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# No SB_DEV_MODE here: compose.demo.yml is what turns dev tokens on (the demo command).
S3_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
COMPOSE="${COMPOSE/SB_PUBLIC_PORT=PORT/SB_PUBLIC_PORT=$PORT}"
COMPOSE="${COMPOSE/SB_S3_PUBLIC_PORT=S3PORT/SB_S3_PUBLIC_PORT=$S3_PORT}"
SCALE="--scale socket-server=3 --scale registry=2 --scale socket-manager=2"
dangling_before="$($DOCKER volume ls -q --filter dangling=true | sort)"
log "docker-compose up -d $SCALE (nginx on 127.0.0.1:$PORT)"
STACK_UP=1
# shellcheck disable=SC2086
timeout 420 $COMPOSE up -d --no-build $SCALE >"$WORK/up.log" 2>&1 \
    || { tail -n 30 "$WORK/up.log"; $COMPOSE ps; die "docker-compose up failed"; }
# The one-shot `keys` service ran and exited 0 before the services started.
keys_exit="$($DOCKER inspect -f '{{.State.ExitCode}} {{.State.Status}}' "$($COMPOSE ps -q keys)")"
[ "$keys_exit" = "0 exited" ] || die "the keys service: $keys_exit, expected 0 exited"
$COMPOSE ps
published="$($DOCKER port "$($COMPOSE ps -q nginx)" 80/tcp)"
[ "$published" = "127.0.0.1:$PORT" ] || die "nginx is published on $published, expected 127.0.0.1:$PORT only"
# Its internal listener (:8081, register/deregister) is not published at all.
all_published="$($DOCKER port "$($COMPOSE ps -q nginx)")"
[ "$all_published" = "80/tcp -> 127.0.0.1:$PORT" ] || die "nginx publishes more than :80: $all_published"

# Source addresses for the 5,000 idle WebSockets: nginx allows 256 connections per address,
# and everything through the published port arrives from one (docker-proxy's). So the client
# connects to nginx's container address directly, from 25 addresses added to the host's side
# of the compose network's bridge (the top of its subnet, which Docker's IPAM hands out
# last); they go away with the network at `down`.
NET="${PROJECT}_default"
SUBNET="$($DOCKER network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$NET" | awk '{print $1}')"
BRIDGE="$(ip -o -4 route show "$SUBNET" | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')"
[ -n "$SUBNET" ] && [ -n "$BRIDGE" ] || die "no bridge for the compose network $NET ($SUBNET)"
SOURCES="$(python3 -c 'import ipaddress, sys
n = ipaddress.ip_network(sys.argv[1])
print(" ".join(f"{n.broadcast_address - k}/{n.prefixlen}" for k in range(2, 27)))' "$SUBNET")"
for a in $SOURCES; do $SUDO ip addr add "$a" dev "$BRIDGE" || die "ip addr add $a dev $BRIDGE"; done
NGINX_IP="$($DOCKER inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$($COMPOSE ps -q nginx)")"

log "running the client checks"
SB_PUBLIC_PORT="$PORT" SMOKE_COMPOSE="$COMPOSE" SMOKE_DOCKER="$DOCKER" SMOKE_SCALE="$SCALE" \
    SMOKE_NGINX_IP="$NGINX_IP" SMOKE_API_KEY="$SMOKE_API_KEY" SMOKE_SOURCES="$(for a in $SOURCES; do printf '%s ' "${a%/*}"; done)" \
    timeout 600 python3 -B compose/smoke_client.py 2>&1 | tee "$WORK/client.log" \
    || die "client checks failed: $(grep -a 'FAILED' "$WORK/client.log" | tail -n 1 | cut -c1-600)"

# nginx logged the WebSocket upgrades, but not their ?token=<JWT>.
nginx_log="$($COMPOSE logs --no-color nginx 2>&1)"
grep -q 'GET /ws/' <<<"$nginx_log" || die "nginx's access log has no WebSocket requests"
if grep -q -i 'token=' <<<"$nginx_log"; then
    die "nginx logged a token: $(grep -i -m1 'token=' <<<"$nginx_log")"
fi

# ---- 5. down -v leaves nothing behind ------------------------------------------------------------
log "docker-compose down -v"
timeout 180 $COMPOSE down -v --remove-orphans >/dev/null 2>&1 || die "docker-compose down -v failed"
STACK_UP=0
left="$($DOCKER ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || die "containers left after down -v: $left"
left="$($DOCKER network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || die "networks left after down -v: $left"
left="$($DOCKER volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || die "volumes left after down -v: $left"
# Anonymous volumes (the redis images' /data) carry no project label: none may dangle.
left="$(comm -13 <(echo "$dangling_before") <($DOCKER volume ls -q --filter dangling=true | sort))"
[ -z "$left" ] || die "volumes left dangling after down -v: $left"
log "passed"
