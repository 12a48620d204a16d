#!/bin/bash
# chronos-train EC2 user data, rendered by instance/boot/bootstrap.py. All logic lives in Python;
# this only gets the agent running, and powers off if it cannot.
set -uo pipefail
# Dead-man switch first: with instance-initiated shutdown = terminate, the machine ends even if
# everything below hangs.
shutdown -h +@@MAX_RUNTIME_MINUTES@@ || true

RUN_ENV=@@ENV@@ BUCKET=@@BUCKET@@ RUN_ID=@@RUN_ID@@ REGION=@@REGION@@
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
ROOT="${CHRONOS_ROOT:-/opt/chronos}"  # overridable only for the tests
LOG="$ROOT/bootstrap.log"
mkdir -p "$ROOT/bundle"
exec > >(tee -a "$LOG") 2>&1

give_up() {  # the agent never started: leave its log where `chronos-train logs` looks, power off
  echo "bootstrap: $1"
  aws s3 cp --only-show-errors "$LOG" "s3://$BUCKET/$RUN_ENV/logs/$RUN_ID/agent.log" || true
  shutdown -h now
  exit 1
}

PY=$(command -v python3.12 || command -v python3.11) \
  || { apt-get -qq update && apt-get -qq install -y python3.11 python3.11-venv >/dev/null && PY=$(command -v python3.11); } \
  || give_up "no python >= 3.11"
"$PY" -c 'import ensurepip' 2>/dev/null \
  || apt-get -qq install -y "$(basename "$PY")-venv" >/dev/null || give_up "no venv support for $PY"

aws s3 cp --only-show-errors "s3://$BUCKET/$RUN_ENV/$RUN_ID/bundle.tar.gz" "$ROOT/bundle.tar.gz" || give_up "cannot fetch the run bundle"
tar -xzf "$ROOT/bundle.tar.gz" -C "$ROOT/bundle" || give_up "cannot unpack the run bundle"
cd "$ROOT/bundle" || give_up "no bundle folder"
"$PY" -m instance.boot.envcache restore-or-build --bucket "$BUCKET" --region "$REGION" \
  --requirements instance/requirements.txt --venv "$ROOT/venv" || give_up "cannot restore or build the python environment"

"$ROOT/venv/bin/python" -m instance.agent --env "$RUN_ENV" --bucket "$BUCKET" --run-id "$RUN_ID" \
  --region "$REGION" --work-dir "$ROOT/work"
code=$?
# 0, 4, 5: the agent cleaned up after itself; 3: fenced, it must write nothing, nor may we.
case $code in
  0|3|4|5) echo "bootstrap: agent exited with $code" ;;
  *) give_up "the agent exited with $code" ;;
esac
shutdown -h now
