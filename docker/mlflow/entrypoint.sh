#!/bin/sh
# MLflow tracking server of the medcl compose stack (docs/deploy.md lists every variable).
#
# Backend store: PostgreSQL, built from POSTGRES_* (or MLFLOW_BACKEND_STORE_URI if set).
# Artifacts: proxied by the server (--serve-artifacts) into MLFLOW_ARTIFACTS_DESTINATION, so
# trainers need no access to the artifact volume.
# Optional basic auth (MLFLOW_AUTH=basic): mlflow's `--app-name basic-auth`; the admin user is
# created on first start from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, which mlflow
# reads from the environment (they are never written to a file). Extra arguments are passed on to
# `mlflow server`.
set -eu

die() {
    echo "mlflow-entrypoint: $*" >&2
    exit 2
}

if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "POSTGRES_PASSWORD is not set — copy docker/.env.example to .env and set it"
    POSTGRES_USER="${POSTGRES_USER:-mlflow}"
    POSTGRES_DB="${POSTGRES_DB:-mlflow}"
    POSTGRES_HOST="${POSTGRES_HOST:-db}"
    POSTGRES_PORT="${POSTGRES_PORT:-5432}"
    # URL-encode user and password (they may contain @ : / %); the URI goes to mlflow through the
    # environment, never on the command line where `ps` would show it.
    enc_user=$(python -c 'import os, urllib.parse as u; print(u.quote(os.environ["POSTGRES_USER"], safe=""))')
    enc_pass=$(python -c 'import os, urllib.parse as u; print(u.quote(os.environ["POSTGRES_PASSWORD"], safe=""))')
    MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${enc_user}:${enc_pass}@${POSTGRES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}"
fi
export MLFLOW_BACKEND_STORE_URI

ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}"
HOST="${MLFLOW_HOST:-0.0.0.0}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-4}"
# Host headers the server accepts (DNS-rebinding protection): the compose service name and
# localhost by default; add the name clients use to reach the server (e.g. mlflow.hospital.org).
ALLOWED_HOSTS="${MLFLOW_SERVER_ALLOWED_HOSTS:-mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"

set -- mlflow server --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    --allowed-hosts "$ALLOWED_HOSTS" "$@"

case "${MLFLOW_AUTH:-none}" in
    none | "") ;;
    basic)
        [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] || die "MLFLOW_AUTH=basic needs MLFLOW_AUTH_ADMIN_PASSWORD (set it in .env)"
        # mlflow's auth app needs a static key for CSRF protection; without one, make a random
        # key for this start (sessions then end when the server restarts) and say so.
        if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
            echo "mlflow-entrypoint: MLFLOW_FLASK_SERVER_SECRET_KEY not set; using a random key for this start" >&2
        fi
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
        export MLFLOW_AUTH_ADMIN_PASSWORD
        AUTH_DIR="${MLFLOW_AUTH_DIR:-/mlflow-auth}"
        mkdir -p "$AUTH_DIR"
        # users and permissions live in their own small database on the mlflow-auth volume
        cat > "$AUTH_DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$AUTH_DIR/basic_auth.db}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
        export MLFLOW_AUTH_CONFIG_PATH="$AUTH_DIR/basic_auth.ini"
        set -- "$@" --app-name basic-auth
        ;;
    *) die "MLFLOW_AUTH must be 'none' or 'basic', not '${MLFLOW_AUTH}'" ;;
esac

echo "mlflow-entrypoint: serving on ${HOST}:${PORT}, artifacts in ${ARTIFACTS}, auth ${MLFLOW_AUTH:-none}" >&2
exec "$@"
