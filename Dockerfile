# One image with every Switchboard service binary; docker-compose.yml picks the binary per
# service with `command:`. Build: `docker compose build` (or `docker build -t switchboard .`).
#
# Stage 1 compiles the dependencies against stub sources first, so that a change to the
# project's own code does not rebuild the ~400 crates it depends on (that layer is only
# invalidated when a Cargo.toml or Cargo.lock changes).
#
# ADDING A WORKSPACE MEMBER: add its manifest to the "manifests" COPY block
# and its directory to the "sources" COPY block below; to ship a new binary, also add it to
# SB_BINS. The e2e test `compose::compose_file_is_valid_and_complete` fails when a member of
# the root Cargo.toml is missing from this file.

ARG RUST_VERSION=1
# Where the runtime stage takes its binaries (/out/*) from: the builder stage below, unless an
# image is named here. scripts/compose-smoke.sh names an image holding release binaries built
# on the host (no image registry there), so the runtime stage it tests is this very stage.
ARG SB_BINARIES=builder
# The runtime base; the smoke test names a locally built Debian bookworm image.
ARG SB_RUNTIME_BASE=debian:bookworm-slim

FROM rust:${RUST_VERSION}-bookworm AS builder
# rust:*-bookworm already carries gcc, make, perl, pkg-config and zlib: enough for the
# bundled librdkafka (rdkafka-sys builds it with ./configure + make, no cmake needed).
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5

# The binaries this image ships: one package each, plus SB_TOOLS, further binaries of those
# packages (switchboard-keys, the registry package's: docker-compose.yml's `keys` service;
# push-gateway-sink, the webhook-dispatcher package's reference push gateway and webhook sink:
# compose.demo.yml's `push-gateway-sink` service).
ARG SB_BINS="registry socket-server socket-manager health-checker message-service webhook-dispatcher"
ARG SB_TOOLS="switchboard-keys push-gateway-sink"

# ---- 1. dependency layer: manifests only, stub sources -----------------------------------
COPY Cargo.toml Cargo.lock ./
# manifests (one line per workspace member)
COPY config/Cargo.toml           config/
COPY credentials/Cargo.toml      credentials/
COPY protocol/Cargo.toml         protocol/
COPY redis/Cargo.toml            redis/
COPY ws-codec/Cargo.toml         ws-codec/
COPY service-kit/Cargo.toml      service-kit/
COPY server-directory/Cargo.toml server-directory/
COPY chat-state/Cargo.toml       chat-state/
COPY registry/Cargo.toml         registry/
COPY socket-server/Cargo.toml    socket-server/
COPY health-checker/Cargo.toml   health-checker/
COPY message-log/Cargo.toml      message-log/
COPY kafka/Cargo.toml            kafka/
COPY socket-manager/Cargo.toml   socket-manager/
COPY message-service/Cargo.toml  message-service/
COPY test-support/Cargo.toml     test-support/
COPY e2e-tests/Cargo.toml        e2e-tests/
COPY loadgen/Cargo.toml          loadgen/
COPY client/Cargo.toml           client/
COPY webhook-dispatcher/Cargo.toml webhook-dispatcher/

# Stub every member generically: src/lib.rs, src/main.rs, and every explicit target `path`
# a manifest names (e.g. test-support's [[bin]] devstack). Then build only the dependencies
# of the shipped binaries, with exactly the package selection used for the real build below
# (the same selection means the same feature unification, so the cache is reused). The
# stubs are deleted afterwards so that none survives next to the real sources.
RUN set -eu; \
    for manifest in */Cargo.toml; do \
        dir="${manifest%/Cargo.toml}"; \
        mkdir -p "$dir/src"; \
        echo 'fn main() {}' > "$dir/src/main.rs"; \
        : > "$dir/src/lib.rs"; \
        for target in $(sed -n 's/^path *= *"\(.*\.rs\)".*/\1/p' "$manifest"); do \
            mkdir -p "$dir/$(dirname "$target")"; \
            echo 'fn main() {}' > "$dir/$target"; \
        done; \
    done; \
    packages=""; for b in $SB_BINS; do packages="$packages -p $b"; done; \
    cargo build --release --locked $packages; \
    for manifest in */Cargo.toml; do rm -rf "${manifest%/Cargo.toml}/src"; done

# ---- 2. the real sources -------------------------------------------------------------------
# sources (one line per workspace member). message-service/ includes migrations/, which
# sqlx::migrate!("./migrations") embeds at compile time.
COPY config/           config/
COPY credentials/      credentials/
COPY protocol/         protocol/
COPY redis/            redis/
COPY ws-codec/         ws-codec/
COPY service-kit/      service-kit/
COPY server-directory/ server-directory/
COPY chat-state/       chat-state/
COPY registry/         registry/
COPY socket-server/    socket-server/
COPY health-checker/   health-checker/
COPY message-log/      message-log/
COPY kafka/           kafka/
COPY socket-manager/   socket-manager/
COPY message-service/  message-service/
COPY test-support/     test-support/
COPY e2e-tests/        e2e-tests/
COPY loadgen/          loadgen/
COPY client/           client/
COPY webhook-dispatcher/ webhook-dispatcher/

# COPY keeps the files' (older) modification times; cargo would then consider the stub
# builds of the workspace crates fresh and ship stub binaries. Touch the sources first.
# profile.release keeps line tables (debug = 1) for backtraces; objcopy compresses them.
RUN set -eu; \
    find . -path ./target -prune -o \( -name '*.rs' -o -name '*.sql' \) -type f -print \
        | xargs touch; \
    packages=""; for b in $SB_BINS; do packages="$packages -p $b"; done; \
    cargo build --release --locked $packages; \
    mkdir -p /out; \
    for b in $SB_BINS $SB_TOOLS; do \
        cp "target/release/$b" /out/; \
        objcopy --compress-debug-sections=zlib "/out/$b"; \
    done

# ---- runtime ---------------------------------------------------------------------------------
FROM ${SB_BINARIES} AS binaries

FROM ${SB_RUNTIME_BASE} AS runtime
# curl: the compose healthchecks (curl -fsS http://localhost:PORT/ready). Skipped when the base
# has them already (the smoke test's offline base, which cannot reach a package mirror).
# The credentials come from volumes compose mounts (its `keys` service writes them, owned by
# uid 10001); see compose/switchboard-entrypoint.sh.
RUN set -eux; \
    if ! command -v curl >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates curl; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin switchboard

COPY compose/switchboard-entrypoint.sh /usr/local/bin/switchboard-entrypoint
COPY --from=binaries /out/ /usr/local/bin/

USER switchboard
ENV SB_LOG_FORMAT=json \
    NO_COLOR=1
# registry 8101, socket-manager 8201, health-checker 8301, message-service 8401,
# webhook-dispatcher 8501, push-gateway-sink 8502, socket-server 9001 (the compose file binds
# each on 0.0.0.0).
EXPOSE 8101 8201 8301 8401 8501 8502 9001
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchboard-entrypoint"]
CMD ["sh", "-c", "echo 'switchboard image: run one of registry, socket-server, socket-manager, health-checker, message-service, webhook-dispatcher, switchboard-keys, push-gateway-sink' >&2; exit 64"]
