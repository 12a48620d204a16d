#!/bin/bash
# chronos-train EC2 user data, rendered by instance/boot/bootstrap.py. It needs from the AMI only
# bash, coreutils, tar, gzip, curl and HTTPS egress: no apt, no system Python. The Python, the
# venv and the agent come from S3 (or, the first time, from uv over HTTPS).
set -uo pipefail
# Dead-man switch first: with instance-initiated shutdown = terminate, the machine ends even if
# everything below hangs. Its time, read off this machine's clock, goes to the agent.
shutdown -h +@@MAX_RUNTIME_MINUTES@@ || true
SHUTDOWN_AT=$(( $(date +%s) + @@MAX_RUNTIME_MINUTES@@ * 60 ))

RUN_ENV=@@ENV@@ BUCKET=@@BUCKET@@ RUN_ID=@@RUN_ID@@ REGION=@@REGION@@
UV_VERSION=@@UV_VERSION@@ PYTHON_BUILD=@@PYTHON_BUILD@@ AWSCLI_VERSION=@@AWSCLI_VERSION@@
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
ROOT="${CHRONOS_ROOT:-/opt/chronos}"            # overridable only for the tests
EXPECT_GPU="${CHRONOS_EXPECT_GPU:-auto}"         # likewise: the tests' machine has no GPU
LOG="$ROOT/bootstrap.log"
LOG_URI="s3://$BUCKET/$RUN_ENV/logs/$RUN_ID/bootstrap.log"
mkdir -p "$ROOT/bundle" "$ROOT/tools"
exec > >(tee -a "$LOG") 2>&1
echo "bootstrap: $RUN_ID on $(uname -m); the machine powers off at $(date -u -d "@$SHUTDOWN_AT" +%FT%TZ) whatever happens"

uv_bin() {  # the pinned uv: the machine's own if it has that version, else its release over HTTPS
  if command -v uv >/dev/null && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
    command -v uv; return
  fi
  local dir="$ROOT/tools/uv-$UV_VERSION" name="uv-$(uname -m)-unknown-linux-gnu.tar.gz"
  if [ ! -x "$dir/uv" ]; then
    local url="https://github.com/astral-sh/uv/releases/download/$UV_VERSION/$name"
    mkdir -p "$dir" && curl -fsSL --retry 5 -o "$dir/$name" "$url" && curl -fsSL --retry 5 -o "$dir/$name.sha256" "$url.sha256" \
      && (cd "$dir" && sha256sum -c --quiet "$name.sha256") \
      && tar -xzf "$dir/$name" -C "$dir" --strip-components=1 || { echo "bootstrap: cannot fetch uv $UV_VERSION" >&2; return 1; }
  fi
  echo "$dir/uv"
}

s3() {  # the AMI's AWS CLI, else the pinned awscli run by uv on a Python uv fetches itself
  if command -v aws >/dev/null; then
    aws "$@"
  else
    local uv; uv=$(uv_bin) || return 1
    UV_TOOL_DIR="$ROOT/tools/uv-tools" UV_CACHE_DIR="$ROOT/uv-cache" UV_PYTHON_INSTALL_DIR="$ROOT/tools/python" \
      "$uv" tool run --quiet --from "awscli==$AWSCLI_VERSION" aws "$@"
  fi
}

# The log reaches S3 at once and every half minute until the agent takes over with its own
# (agent.log): `chronos-train logs` shows the boot from its first line. Two objects, never one.
ship_log() { s3 s3 cp --only-show-errors "$LOG" "$LOG_URI" </dev/null >/dev/null 2>&1 || true; }
ship_log
( while sleep "${CHRONOS_BOOT_LOG_SECONDS:-30}"; do ship_log; done ) &
SHIPPER=$!
finish() { kill "$SHIPPER" 2>/dev/null; wait "$SHIPPER" 2>/dev/null; ship_log; }
give_up() {  # the agent never ran, or died without cleaning up: say why where logs look, power off
  echo "bootstrap: $1"
  finish
  shutdown -h now
  exit 1
}

s3 s3 cp --only-show-errors "s3://$BUCKET/$RUN_ENV/$RUN_ID/bundle.tar.gz" "$ROOT/bundle.tar.gz" || give_up "cannot fetch the run bundle"
tar -xzf "$ROOT/bundle.tar.gz" -C "$ROOT/bundle" || give_up "cannot unpack the run bundle"
cd "$ROOT/bundle" || give_up "no bundle folder"
# shellcheck source=environment.sh
. instance/boot/environment.sh || give_up "the bundle has no instance/boot/environment.sh"
prepare_environment "$ROOT/env" || give_up "cannot restore or build the python environment"

echo "bootstrap: starting the agent"
"$ROOT/env/venv/bin/python" -m instance.agent --env "$RUN_ENV" --bucket "$BUCKET" --run-id "$RUN_ID" \
  --region "$REGION" --work-dir "$ROOT/work" --shutdown-at "$SHUTDOWN_AT" --expect-gpu "$EXPECT_GPU"
code=$?
# 0, 4, 5: the agent cleaned up after itself; 3: fenced, it must write nothing, nor may we.
case $code in
  0|3|4|5) echo "bootstrap: agent exited with $code" ;;
  *) give_up "the agent exited with $code" ;;
esac
finish
shutdown -h now
