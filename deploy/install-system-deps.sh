#!/usr/bin/env bash
# Installs the system binaries `make up` and `make test` need, with apt-get when root; otherwise prints
# the exact command to run. Idempotent: does nothing when everything is present.
set -euo pipefail
declare -A need=(
  [redis-server]=redis-server
  [mariadbd]=mariadb-server
  [mariadb]=mariadb-client
  [nginx]=nginx
  [wrk]=wrk
  [chromium]=chromium
  [npm]=npm
  [prometheus]=prometheus
  [rsync]=rsync  # Galera's state transfer to a joining node (`faultline up --db galera`, its tests)
)
# files that are not commands
declare -A need_file=(
  [/usr/lib/galera/libgalera_smm.so]=galera-4
)
missing=()
for bin in "${!need[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$bin" ]; then
    missing+=("${need[$bin]}")
  fi
done
for file in "${!need_file[@]}"; do
  [ -e "$file" ] || missing+=("${need_file[$file]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts some services on install; Faultline runs its own private instances instead.
  for svc in nginx prometheus; do service "$svc" stop >/dev/null 2>&1 || true; done
else
  echo "missing system packages; run:"
  echo "  sudo apt-get install -y ${missing[*]}"
  exit 1
fi
