#!/bin/bash
# The object store's setup in docker-compose.yml (issue 28; docs/compose.md, "Object store"),
# run by two one-shot services in the Switchboard image (bash, curl), as root:
#
#   garage-setup.sh keys    before Garage starts (service `garage-keys`, no network): generates,
#                           once per deployment, Garage's RPC secret and admin token into
#                           GARAGE_SECRETS_DIR (the `garage-secrets` volume: Garage and the
#                           setup job only), and the message service's S3 key into S3_AUTH_DIR
#                           (its own `s3-message-service` volume, handed to uid 10001, mode
#                           600; compose/switchboard-entrypoint.sh turns the files into
#                           SB_S3_ACCESS_KEY_ID and SB_S3_SECRET_ACCESS_KEY).
#   garage-setup.sh bucket  once Garage is healthy (service `garage-setup`): through Garage's
#                           admin API, imports that key, creates the bucket SB_S3_BUCKET if
#                           missing and lets the key read, write and own it; then, through the
#                           S3 API with that key (PutBucketCors), sets the bucket's CORS rule
#                           for the page's origins: SB_S3_CORS_ORIGINS (comma separated), by
#                           default http://SB_PUBLIC_HOST:SB_PUBLIC_PORT and 127.0.0.1 there.
#
# The CORS rule is the one test-support writes for the local stack
# (test-support/src/object_store.rs, cors_configuration): PUT (the pre-signed upload, with its
# signed Content-Type), GET and HEAD (downloads), ETag exposed, preflights cached 600 s. Every
# step is idempotent: the services run at every `up`.
set -euo pipefail

secrets="${GARAGE_SECRETS_DIR:-/var/lib/garage/secrets}"
s3_auth="${S3_AUTH_DIR:-/var/lib/switchboard/s3}"
owner="${SB_SECRETS_OWNER:-10001:10001}"
log() { echo "garage-setup: $*" >&2; }

# new_secret FILE BYTES [OWNER]: a random hex secret, unless FILE holds one already.
new_secret() {
    local file="$1" bytes="$2" who="${3:-0:0}"
    if [ ! -s "$file" ]; then
        (umask 077 && od -An -N"$bytes" -tx1 /dev/urandom | tr -d ' \n' >"$file.new")
        chown "$who" "$file.new"
        mv "$file.new" "$file"
    fi
}

keys() {
    mkdir -p "$secrets" "$s3_auth"
    chmod 700 "$secrets"
    # Garage refuses secret files others can read.
    new_secret "$secrets/rpc_secret" 32
    new_secret "$secrets/admin_token" 32
    if [ ! -s "$s3_auth/SB_S3_ACCESS_KEY_ID" ]; then
        # Garage's key ids are GK + 24 hex digits.
        (umask 077 && printf 'GK%s' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" \
            >"$s3_auth/SB_S3_ACCESS_KEY_ID.new")
        chown "$owner" "$s3_auth/SB_S3_ACCESS_KEY_ID.new"
        mv "$s3_auth/SB_S3_ACCESS_KEY_ID.new" "$s3_auth/SB_S3_ACCESS_KEY_ID"
    fi
    new_secret "$s3_auth/SB_S3_SECRET_ACCESS_KEY" 32 "$owner"
    chown "$owner" "$s3_auth"
    chmod 700 "$s3_auth"
    log "secrets in place"
}

# admin METHOD PATH [JSON]: Garage's admin API (v2); prints the body, fails unless 2xx.
admin() {
    local method="$1" path="$2" body="${3:-}" out status
    out="$(mktemp)"
    status="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" \
        -H "authorization: Bearer $(cat "$secrets/admin_token")" \
        -H 'content-type: application/json' ${body:+--data-binary "$body"} \
        "$GARAGE_ADMIN_URL$path")" || status=000
    cat "$out"
    rm -f "$out"
    [ "${status:0:1}" = 2 ]
}

cors_rule() {
    local origins="" origin
    IFS=',' read -ra list <<<"$(cors_origins)"
    for origin in "${list[@]}"; do
        origin="$(echo "$origin" | tr -d ' ')"
        origin="${origin%/}"
        [ -z "$origin" ] || origins+="<AllowedOrigin>$origin</AllowedOrigin>"
    done
    [ -n "$origins" ] || { log "SB_S3_CORS_ORIGINS names no origin"; exit 1; }
    printf '%s' "<CORSConfiguration><CORSRule>$origins<AllowedMethod>PUT</AllowedMethod><AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod><AllowedHeader>content-type</AllowedHeader><ExposeHeader>ETag</ExposeHeader><MaxAgeSeconds>600</MaxAgeSeconds></CORSRule></CORSConfiguration>"
}

# SB_S3_CORS_ORIGINS, or the page's own origins: http://SB_PUBLIC_HOST:SB_PUBLIC_PORT and
# the same port on 127.0.0.1 (a browser counts localhost and 127.0.0.1 as two origins).
cors_origins() {
    if [ -n "${SB_S3_CORS_ORIGINS:-}" ]; then
        echo "$SB_S3_CORS_ORIGINS"
    else
        echo "http://${SB_PUBLIC_HOST:-localhost}:${SB_PUBLIC_PORT:-8080},http://127.0.0.1:${SB_PUBLIC_PORT:-8080}"
    fi
}

bucket() {
    local key_id secret bucket="${SB_S3_BUCKET:-switchboard-attachments}" info id
    key_id="$(cat "$s3_auth/SB_S3_ACCESS_KEY_ID")"
    secret="$(cat "$s3_auth/SB_S3_SECRET_ACCESS_KEY")"
    for _ in $(seq 1 60); do
        admin GET /v2/GetClusterHealth >/dev/null 2>&1 && break
        sleep 1
    done
    admin GET /v2/GetClusterHealth >/dev/null || { log "Garage's admin API does not answer"; exit 1; }
    if ! admin GET "/v2/GetKeyInfo?id=$key_id" >/dev/null 2>&1; then
        admin POST /v2/ImportKey \
            "{\"accessKeyId\":\"$key_id\",\"secretAccessKey\":\"$secret\",\"name\":\"message-service\"}" \
            >/dev/null || { log "importing the message service's key failed"; exit 1; }
    fi
    # The layout (--single-node) may take a moment to reach the tables: retry the creation.
    info=""
    for _ in $(seq 1 30); do
        info="$(admin GET "/v2/GetBucketInfo?globalAlias=$bucket" 2>/dev/null)" && break
        info="$(admin POST /v2/CreateBucket "{\"globalAlias\":\"$bucket\"}" 2>/dev/null)" && break
        info=""
        sleep 1
    done
    # The first "id" of the answer is the bucket's (no jq in the image).
    id="$(printf '%s' "$info" | tr -d ' \n' | sed -n 's/^{"id":"\([0-9a-f]*\)".*/\1/p')"
    [ -n "$id" ] || { log "no bucket $bucket: $info"; exit 1; }
    admin POST /v2/AllowBucketKey \
        "{\"bucketId\":\"$id\",\"accessKeyId\":\"$key_id\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" \
        >/dev/null || { log "allowing the key on $bucket failed"; exit 1; }
    # PutBucketCors, signed with the key (curl's SigV4; Garage's region is its s3_region).
    # `cors=`, not `cors`: curl 7.88 signs a bare `?cors` differently from the store.
    local out status
    out="$(mktemp)"
    status="$(curl -sS -o "$out" -w '%{http_code}' -X PUT \
        --aws-sigv4 "aws:amz:${SB_S3_REGION:-garage}:s3" --user "$key_id:$secret" \
        -H 'content-type: application/xml' \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        --data-binary "$(cors_rule)" "$GARAGE_S3_URL/$bucket?cors=")" || status=000
    [ "${status:0:1}" = 2 ] || { log "PutBucketCors answered $status: $(cat "$out")"; exit 1; }
    rm -f "$out"
    log "bucket $bucket ready; CORS allows $(cors_origins)"
}

case "${1:-}" in
    keys) keys ;;
    bucket) bucket ;;
    *) echo "usage: $0 keys|bucket" >&2; exit 2 ;;
esac
