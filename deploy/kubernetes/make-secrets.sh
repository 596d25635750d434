#!/usr/bin/env bash
# Prints the per-service Secrets of a Switchboard deployment as Kubernetes YAML:
#
#   deploy/kubernetes/make-secrets.sh NAMESPACE | kubectl apply -f -
#
# Made fresh on every run (keep the output in your secret store, or run it once): one random
# secret per service role (SB_SERVICE_SECRET, 48 hex digits), every role's SHA-256 in each
# service's SB_CALLER_KEYS (hashes only: a service cannot present another's credential), and
# an Ed25519 key pair for client tokens: every service gets the public key
# (SB_JWT_PUBLIC_KEY_FILE), only the registry the private one (docs/configuration.md,
# docs/security.md). Needs openssl, sha256sum and python3.
#
# The managed stores' credentials come from the environment (each service its own Redis ACL
# user's password; docs/deploy.md, "Per-service ACL users"):
#   SB_REDIS_PASSWORD_REGISTRY, SB_REDIS_PASSWORD_SOCKET_SERVER,
#   SB_REDIS_PASSWORD_SOCKET_MANAGER, SB_REDIS_PASSWORD_MESSAGE_SERVICE,
#   SB_REDIS_PASSWORD_HEALTH_CHECKER   the Redis users sb-<service>
#   SB_REDIS_SENTINEL_PASSWORD         the Sentinels' user sb-client
#   SB_DATABASE_URL                    the message service's PostgreSQL URL (sslmode=require)
#   SB_WEBHOOK_DATABASE_URL            the webhook dispatcher's (may be the same database)
#   SB_API_KEYS                        optional: the server API's key entries (JSON), or empty
# `--example` fills them with placeholders instead (scripts/check-deploy.sh renders and
# validates that output); never apply it.
set -euo pipefail

example=false
if [ "${1:-}" = "--example" ]; then
    example=true
    shift
fi
namespace="${1:?usage: make-secrets.sh [--example] NAMESPACE}"

store_vars=(SB_REDIS_PASSWORD_REGISTRY SB_REDIS_PASSWORD_SOCKET_SERVER SB_REDIS_PASSWORD_SOCKET_MANAGER
    SB_REDIS_PASSWORD_MESSAGE_SERVICE SB_REDIS_PASSWORD_HEALTH_CHECKER SB_REDIS_SENTINEL_PASSWORD
    SB_DATABASE_URL SB_WEBHOOK_DATABASE_URL)
if $example; then
    for v in "${store_vars[@]}"; do
        case "$v" in
            *DATABASE_URL) printf -v "$v" '%s' "postgres://switchboard:EXAMPLE@db.internal:5432/switchboard?sslmode=require" ;;
            *) printf -v "$v" '%s' "EXAMPLE-${v#SB_}" ;;
        esac
    done
else
    missing=()
    for v in "${store_vars[@]}"; do
        [ -n "${!v:-}" ] || missing+=("$v")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "make-secrets.sh: set ${missing[*]} (or --example for placeholders)" >&2
        exit 2
    fi
fi
SB_API_KEYS="${SB_API_KEYS:-}"

command -v openssl >/dev/null || { echo "make-secrets.sh: openssl is needed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl genpkey -algorithm ed25519 -out "$work/jwt.pem" 2>/dev/null
openssl pkey -in "$work/jwt.pem" -pubout -out "$work/jwt.pub.pem"

roles=(registry socket-server socket-manager message-service health-checker webhook-dispatcher)
declare -A secret
caller_keys=""
for role in "${roles[@]}"; do
    secret[$role]=$(openssl rand -hex 24)
    hash=$(printf '%s' "${secret[$role]}" | sha256sum | cut -d' ' -f1)
    caller_keys="${caller_keys:+$caller_keys,}$role=$hash"
done

# A YAML block scalar of a file, indented for stringData.
block() {
    sed 's/^/    /' "$1"
}
# A YAML double-quoted string (JSON is YAML).
quote() {
    python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"
}

for role in "${roles[@]}"; do
    upper=$(printf '%s' "$role" | tr 'a-z-' 'A-Z_')
    echo "---"
    echo "apiVersion: v1"
    echo "kind: Secret"
    echo "metadata:"
    echo "  name: switchboard-$role"
    echo "  namespace: $namespace"
    echo "  labels: {app.kubernetes.io/name: $role, app.kubernetes.io/part-of: switchboard}"
    echo "type: Opaque"
    echo "stringData:"
    if [ "$role" = webhook-dispatcher ]; then
        # The dispatcher calls no other service and uses no Redis.
        echo "  SB_WEBHOOK_DATABASE_URL: $(quote "$SB_WEBHOOK_DATABASE_URL")"
        echo "  SB_API_KEYS: $(quote "$SB_API_KEYS")"
        continue
    fi
    redis_var="SB_REDIS_PASSWORD_$upper"
    echo "  SB_SERVICE_SECRET: $(quote "${secret[$role]}")"
    echo "  SB_CALLER_KEYS: $(quote "$caller_keys")"
    echo "  SB_REDIS_PASSWORD: $(quote "${!redis_var}")"
    echo "  SB_REDIS_SENTINEL_PASSWORD: $(quote "$SB_REDIS_SENTINEL_PASSWORD")"
    echo "  jwt-ed25519.pub.pem: |"
    block "$work/jwt.pub.pem"
    if [ "$role" = registry ]; then
        echo "  jwt-ed25519.pem: |"
        block "$work/jwt.pem"
    fi
    if [ "$role" = message-service ]; then
        echo "  SB_DATABASE_URL: $(quote "$SB_DATABASE_URL")"
        echo "  SB_API_KEYS: $(quote "$SB_API_KEYS")"
    fi
done
