#!/bin/sh
# Waits (up to 120 s) for $READY_URL to answer 200, then runs hey with the given arguments.
set -eu
url="${READY_URL:-}"
if [ -n "$url" ]; then
  i=0
  until curl -fsS -o /dev/null "$url"; do
    i=$((i + 1))
    if [ "$i" -ge 120 ]; then
      echo "loadgen: $url not ready after 120 s" >&2
      exit 1
    fi
    sleep 1
  done
fi
exec hey "$@"
