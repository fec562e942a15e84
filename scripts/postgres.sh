#!/usr/bin/env bash
# Make a local PostgreSQL ready for certrail (development and CI).
#
#   sudo bash scripts/postgres.sh
#
# Run as root on Debian (12). Idempotent: every step checks before it acts, so
# running it again is harmless (and when everything is already in place it
# needs no root: it only checks the login and prints the URL). It
#   1. installs PostgreSQL from Debian's packages when it is missing,
#   2. starts the cluster listening on port 5432 (creating one if none exists),
#   3. waits (with a deadline) until the server accepts connections,
#   4. creates the login role `certrail` (password `certrail`, CREATEDB) and
#      the database `certrail` owned by it, if they are missing,
#   5. checks that the role can log in over TCP with its password.
# Progress goes to stderr; the last (and only) line on stdout is the URL:
#   postgresql+psycopg://certrail:certrail@127.0.0.1:5432/certrail
# These credentials are for a throwaway local server only.

set -euo pipefail

readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly PG_ROLE=certrail
readonly PG_PASSWORD=certrail
readonly PG_DATABASE=certrail
readonly READY_DEADLINE_SECONDS=60

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

url="postgresql+psycopg://${PG_ROLE}:${PG_PASSWORD}@${PG_HOST}:${PG_PORT}/${PG_DATABASE}"

# Can the role log in over TCP with its password, and create databases?
role_ready() {
    command -v psql >/dev/null 2>&1 || return 1
    [[ "$(PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=10 psql --no-psqlrc -X -q -tA \
        -h "$PG_HOST" -p "$PG_PORT" -U "$PG_ROLE" -d "$PG_DATABASE" \
        -c 'SELECT rolcreatedb FROM pg_catalog.pg_roles WHERE rolname = current_user' 2>/dev/null)" == "t" ]]
}

# Already set up (e.g. a second run): nothing to do, and no root needed.
if role_ready; then
    log "PostgreSQL is running and role $PG_ROLE can log in to $PG_DATABASE"
    echo "$url"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    die "run me as root (e.g. sudo bash scripts/postgres.sh)"
fi

# Run psql as the postgres superuser over the local Unix socket (peer auth).
# `cd /` keeps psql from complaining about an unreadable working directory.
as_postgres_psql() {
    (cd / && runuser -u postgres -- psql --no-psqlrc -X -q -v ON_ERROR_STOP=1 \
        -p "$PG_PORT" -d postgres "$@")
}

installed_versions() {
    # Server versions installed by Debian's packages, newest last.
    local dir
    for dir in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$dir" ]] || continue
        basename "$(dirname "$(dirname "$dir")")"
    done | sort -n
}

# 1. Install -----------------------------------------------------------------
if ! command -v pg_lsclusters >/dev/null 2>&1 || [[ -z "$(installed_versions)" ]]; then
    log "PostgreSQL is not installed; installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
else
    log "PostgreSQL is installed: $(installed_versions | tr '\n' ' ')"
fi

# 2. Find or create the cluster on our port, and start it ---------------------
# pg_lsclusters --no-header: "<version> <name> <port> <status> <owner> <datadir> <log>"
cluster_line() {
    # (no early `exit` in awk: with pipefail, pg_lsclusters could die of SIGPIPE)
    pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '!found && $3 == port { print; found = 1 }'
}

line="$(cluster_line)"
if [[ -z "$line" ]]; then
    version="$(installed_versions | tail -n 1)"
    [[ -n "$version" ]] || die "no PostgreSQL server binaries found under /usr/lib/postgresql"
    name=main
    if [[ -d "/etc/postgresql/$version/$name" ]]; then
        name=certrail   # a 'main' cluster exists on another port: leave it alone
    fi
    log "no cluster on port $PG_PORT; creating cluster $version/$name"
    pg_createcluster -p "$PG_PORT" "$version" "$name" >&2
    line="$(cluster_line)"
    [[ -n "$line" ]] || die "pg_createcluster did not create a cluster on port $PG_PORT"
fi

read -r version name _port status _rest <<<"$line"
if [[ "$status" == online* ]]; then
    log "cluster $version/$name is already running on port $PG_PORT"
else
    log "starting cluster $version/$name (status: $status)"
    pg_ctlcluster "$version" "$name" start >&2
fi

# 3. Wait until it accepts connections ---------------------------------------
deadline=$(( $(date +%s) + READY_DEADLINE_SECONDS ))
until pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; do
    if (( $(date +%s) >= deadline )); then
        die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${READY_DEADLINE_SECONDS}s; see /var/log/postgresql/postgresql-$version-$name.log"
    fi
    sleep 0.5
done
log "PostgreSQL accepts connections on $PG_HOST:$PG_PORT"

# 4. Role and database --------------------------------------------------------
as_postgres_psql <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '${PG_ROLE}') THEN
        CREATE ROLE ${PG_ROLE} LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
        RAISE NOTICE 'created role ${PG_ROLE}';
    ELSE
        ALTER ROLE ${PG_ROLE} LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
    END IF;
END
\$\$;
SQL

if [[ "$(as_postgres_psql -tA -c "SELECT 1 FROM pg_catalog.pg_database WHERE datname = '${PG_DATABASE}'")" != "1" ]]; then
    log "creating database $PG_DATABASE"
    as_postgres_psql -c "CREATE DATABASE ${PG_DATABASE} OWNER ${PG_ROLE}"
else
    log "database $PG_DATABASE exists"
fi

# 5. Check the role can log in over TCP with its password ---------------------
if ! role_ready; then
    die "role $PG_ROLE cannot log in to $PG_HOST:$PG_PORT/$PG_DATABASE with its password (check pg_hba.conf)"
fi
log "ready"

echo "$url"
