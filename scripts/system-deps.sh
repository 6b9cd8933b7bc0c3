#!/usr/bin/env bash
# Installs the system packages Peek needs that pip cannot: Tesseract (OCR) always; for the tests,
# PostgreSQL and Redis server binaries when no server answers (the tests then start throwaway ones).
# Usage: scripts/system-deps.sh [run|test]
set -euo pipefail
mode="${1:-run}"
need=()
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr tesseract-ocr-eng)
if [ "$mode" = test ]; then
  if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && [ -z "${DATABASE_URL:-}" ]; then
    ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || need+=(postgresql)
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && [ -z "${REDIS_URL:-}" ]; then
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "Peek needs these Debian packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
