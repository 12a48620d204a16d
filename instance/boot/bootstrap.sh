#!/bin/bash
# chronos-train EC2 user data, rendered by instance/boot/bootstrap.py. It needs from the AMI only
# bash, coreutils, tar, gzip, curl, systemd and HTTPS egress: no apt, no system Python. The
# Python, the venv and the agent come from S3 (or, the first time, from uv over HTTPS).
# Every way this machine ends goes through EC2 first (out of the run's group, then terminate
# itself) and powers off last: a group's machine that powers itself off may only stop, bill its
# volume and be replaced by its group (docs/reliability.md).
set -uo pipefail
RUN_ENV=@@ENV@@ BUCKET=@@BUCKET@@ RUN_ID=@@RUN_ID@@ REGION=@@REGION@@ GROUP=@@GROUP@@
MAX_RUNTIME_MINUTES=@@MAX_RUNTIME_MINUTES@@
UV_VERSION=@@UV_VERSION@@ PYTHON_BUILD=@@PYTHON_BUILD@@ AWSCLI_VERSION=@@AWSCLI_VERSION@@
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
ROOT="${CHRONOS_ROOT:-/opt/chronos}"            # overridable only for the tests
EXPECT_GPU="${CHRONOS_EXPECT_GPU:-auto}"         # likewise: the tests' machine has no GPU
IMDS="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}"
LOG="$ROOT/bootstrap.log" SELF="$ROOT/user-data.sh" SHIPPER=""
LOG_URI="s3://$BUCKET/$RUN_ENV/logs/$RUN_ID/bootstrap.log"
mkdir -p "$ROOT/bundle" "$ROOT/tools"

if [ "${1:-}" != --end-machine ]; then
  # Dead-man switch first, before anything that can hang: a timer that ends the machine through
  # EC2 at max_runtime_minutes (this script again, run by systemd whatever became of this one);
  # an OS power-off five minutes later is the very last resort. The agent gets the timer's time.
  shutdown -h +$((MAX_RUNTIME_MINUTES + 5)) || true
  SHUTDOWN_AT=$(( $(date +%s) + MAX_RUNTIME_MINUTES * 60 ))
  cp -f "$0" "$SELF" && systemd-run --quiet --unit=chronos-dead-man --on-active="${MAX_RUNTIME_MINUTES}m" \
    /bin/bash "$SELF" --end-machine "the dead-man switch: max_runtime_minutes ($MAX_RUNTIME_MINUTES) is over"
  TIMER=$?
fi

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

aws_cli() {  # the AMI's AWS CLI, else the pinned awscli run by uv on a Python uv fetches itself
  if command -v aws >/dev/null; then
    aws "$@"
  else
    local uv; uv=$(uv_bin) || return 1
    UV_TOOL_DIR="$ROOT/tools/uv-tools" UV_CACHE_DIR="$ROOT/uv-cache" UV_PYTHON_INSTALL_DIR="$ROOT/tools/python" \
      "$uv" tool run --quiet --from "awscli==$AWSCLI_VERSION" aws "$@"
  fi
}

imds() {  # an IMDSv2 value
  local token
  token=$(curl -fsS --max-time 5 --retry 3 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token") \
    && curl -fsS --max-time 5 --retry 3 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/$1"
}
INSTANCE_ID=$(imds meta-data/instance-id) || INSTANCE_ID=""

# The log reaches S3 at once and every half minute until the agent takes over with its own
# (agent.log): `chronos-train logs` shows the boot from its first line. Two objects, never one.
ship_log() { aws_cli s3 cp --only-show-errors "$LOG" "$LOG_URI" </dev/null >/dev/null 2>&1 || true; }
finish() { [ -z "$SHIPPER" ] || { kill "$SHIPPER" 2>/dev/null; wait "$SHIPPER" 2>/dev/null; }; ship_log; }

leave_group() {  # out of the run's group, its desired capacity going to 0: nothing replaces this machine
  if aws_cli autoscaling detach-instances --auto-scaling-group-name "$GROUP" --instance-ids "$INSTANCE_ID" \
       --should-decrement-desired-capacity >/dev/null \
     || aws_cli autoscaling update-auto-scaling-group --auto-scaling-group-name "$GROUP" --min-size 0 --desired-capacity 0; then
    echo "bootstrap: left group $GROUP (desired capacity 0)"
  else
    echo "bootstrap: could not take group $GROUP to 0 machines"
  fi
}

end_machine() {  # through EC2 first (a refused or failed call is logged); powering off comes last
  finish
  if [ -z "$INSTANCE_ID" ] || ! aws_cli ec2 terminate-instances --instance-ids "$INSTANCE_ID" >/dev/null; then
    echo "bootstrap: EC2 did not terminate instance '${INSTANCE_ID}'; powering off"
    ship_log
  fi
  shutdown -h now
}

json_str() {  # $1 as a JSON string
  local s
  s=$(printf '%s' "$1" | tr '\000-\037' ' ') && s=${s//\\/\\\\} && printf '"%s"' "${s//\"/\\\"}"
}

give_up() {  # $1 reason: boot_failed (the agent never ran) | agent_crashed (it died without its cleanup); $2 why
  leave_group
  echo "bootstrap: $2"
  # The CLI's word on the run comes from this record (instance/protocol/bootfailure.py).
  printf '{"run_id": %s, "instance_id": %s, "reason": %s, "message": %s, "at": "%s", "log_uri": %s}\n' \
    "$(json_str "$RUN_ID")" "$(json_str "$INSTANCE_ID")" "$(json_str "$1")" "$(json_str "$2")" "$(date -u +%FT%TZ)" \
    "$(json_str "$LOG_URI")" > "$ROOT/boot_failure.json"
  aws_cli s3 cp --only-show-errors "$ROOT/boot_failure.json" "s3://$BUCKET/$RUN_ENV/logs/$RUN_ID/boot_failure.json" \
    </dev/null >/dev/null 2>&1 || echo "bootstrap: could not write the boot failure record"
  end_machine
  exit 1
}

if [ "${1:-}" = --end-machine ]; then  # the dead-man switch's timer
  exec >> "$LOG" 2>&1
  leave_group
  echo "bootstrap: $2"
  end_machine
  exit 0
fi

exec > >(tee -a "$LOG") 2>&1
echo "bootstrap: $RUN_ID on ${INSTANCE_ID:-an instance IMDS did not name} ($(uname -m)); it ends at $(date -u -d "@$SHUTDOWN_AT" +%FT%TZ) whatever happens"
[ "$TIMER" = 0 ] || echo "bootstrap: could not set the dead-man switch's timer; only the OS power-off is left for it"
ship_log
( while sleep "${CHRONOS_BOOT_LOG_SECONDS:-30}"; do ship_log; done ) &
SHIPPER=$!

aws_cli s3 cp --only-show-errors "s3://$BUCKET/$RUN_ENV/$RUN_ID/bundle.tar.gz" "$ROOT/bundle.tar.gz" || give_up boot_failed "cannot fetch the run bundle"
tar -xzf "$ROOT/bundle.tar.gz" -C "$ROOT/bundle" || give_up boot_failed "cannot unpack the run bundle"
cd "$ROOT/bundle" || give_up boot_failed "no bundle folder"
# shellcheck source=environment.sh
. instance/boot/environment.sh || give_up boot_failed "the bundle has no instance/boot/environment.sh"
prepare_environment "$ROOT/env" || give_up boot_failed "cannot restore or build the python environment"
# An agent that cannot even be imported never counts itself as an attempt: say so here.
if ! err=$("$ROOT/env/venv/bin/python" -m instance.agent --check-environment 2>&1); then
  echo "$err"
  give_up boot_failed "the agent cannot start: ${err##*$'\n'}"
fi

echo "bootstrap: starting the agent"
"$ROOT/env/venv/bin/python" -m instance.agent --env "$RUN_ENV" --bucket "$BUCKET" --run-id "$RUN_ID" \
  --region "$REGION" --work-dir "$ROOT/work" --shutdown-at "$SHUTDOWN_AT" --expect-gpu "$EXPECT_GPU"
code=$?
# 0, 4, 5: the agent cleaned up and ended its machine; 3: fenced, it must write nothing, nor may
# we; 7: interrupted, it ended its machine and left the run to the group's next one.
case $code in
  0|3|4|5|7) echo "bootstrap: agent exited with $code" ;;
  *) give_up agent_crashed "the agent exited with $code" ;;
esac
end_machine
