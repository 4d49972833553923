#!/usr/bin/env bash
# tollway's test command (README): lint, format check, type check, then pytest.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k policy -x    # extra args go to pytest
#
# Works from any directory and on a fresh Debian machine: creates .venv, installs
# '.[dev]' when pyproject.toml changed, and apt-installs the servers the tests need
# (redis-server, redis-cli; postgresql for initdb/postgres/pg_ctl; prometheus for promtool). Env: PYTHON (interpreter for a new .venv, default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- system packages
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root or sudo to run: $*"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
    if [ "$apt_updated" -eq 0 ]; then
        step "apt-get update"
        as_root apt-get update -q
        apt_updated=1
    fi
    step "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# need_command COMMAND DEBIAN_PACKAGE
need_command() {
    command -v "$1" >/dev/null 2>&1 && return 0
    apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "$1 still not on PATH after installing $2"
}

# ---------------------------------------------------------------- python env
PYTHON="${PYTHON:-python3}"
VENV="$PWD/.venv"
VPY="$VENV/bin/python"

if [ ! -x "$VPY" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
    # Debian's system python needs python3-venv for ensurepip
    "$PYTHON" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    step "create .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml (or the venv's python) changed.
stamp="$VENV/.tollway-dev-install.sha256"
want="$({ cat pyproject.toml; "$VPY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$want" ] \
    || ! "$VPY" -c 'import importlib.metadata as m; m.version("tollway")' >/dev/null 2>&1; then
    step "pip install -e '.[dev]'"
    rm -f "$stamp"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip install -q -e '.[dev]'
    echo "$want" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"

# ---------------------------------------------------------------- servers
# The tests start their own servers on 127.0.0.1 (tests/servers.py); they only
# need the binaries. A missing binary is installed here, never skipped.
need_command redis-server redis-server
need_command redis-cli redis-tools
# PostgreSQL (the ledger's tests): initdb, postgres and pg_ctl. Debian keeps them in
# /usr/lib/postgresql/<major>/bin, off PATH: put the newest such directory on PATH first,
# then install the package if they are still missing. Debian's package also creates the
# 'postgres' account that tests/servers.py runs the server as under root (PostgreSQL refuses
# to run as root); the package's own cluster is not used (the tests start their own).
pg_bin_on_path() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        case ":$PATH:" in *":$dir:"*) ;; *) export PATH="$PATH:$dir" ;; esac
    fi
}
pg_bin_on_path
if ! command -v initdb >/dev/null 2>&1 || ! command -v pg_ctl >/dev/null 2>&1 \
    || ! command -v postgres >/dev/null 2>&1; then
    apt_install postgresql
    pg_bin_on_path
fi
need_command initdb postgresql
need_command pg_ctl postgresql
need_command postgres postgresql
# promtool (the metrics tests check /metrics and examples/alerts.yml with it).
need_command promtool prometheus

# ---------------------------------------------------------------- checks
lint_paths=()
for dir in src tests bench; do
    if [ -d "$dir" ]; then lint_paths+=("$dir"); fi
done

step "ruff check ${lint_paths[*]}"
"$VPY" -m ruff check "${lint_paths[@]}"

step "ruff format --check ${lint_paths[*]}"
"$VPY" -m ruff format --check "${lint_paths[@]}"

step "mypy"
"$VPY" -m mypy

step "pytest $*"
rc=0
"$VPY" -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    printf 'error: pytest collected no tests (exit 5): treated as a failure\n' >&2
fi
step "done (pytest exit $rc)"
exit "$rc"
