"""The EC2 user data: instance/boot/bootstrap.sh with the run's values filled in (pure, light).

Every value is checked against the layout rules and shell-quoted, so the rendered script cannot
be bent by a crafted name; placeholders are @@NAME@@ so that bash's own $VARS stay untouched.
"""
from __future__ import annotations

import re
import shlex
from importlib import resources

from ..protocol.group import group_name
from ..protocol.layout import check_env, check_run_id

# User data is limited to 16 KB; the script is far smaller, this keeps it so.
USER_DATA_LIMIT = 16 * 1024
# The machine's toolchain, pinned: the uv release fetched when the AMI has none, the standalone
# CPython it installs (a build uv knows; part of the environment cache key), and the awscli run
# through uv when the AMI lacks one.
UV_VERSION = "0.13.9"
PYTHON_BUILD = "cpython-3.11.18"
AWSCLI_VERSION = "1.46.3"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def template() -> str:
    return resources.files(__package__).joinpath("bootstrap.sh").read_text()


def render_bootstrap(*, env: str, bucket: str, run_id: str, region: str, max_runtime_minutes: int) -> str:
    check_env(env)
    check_run_id(run_id)
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
    if not _REGION_RE.match(region):
        raise ValueError(f"{region!r} is not an AWS region name")
    if isinstance(max_runtime_minutes, bool) or not isinstance(max_runtime_minutes, int) or max_runtime_minutes <= 0:
        raise ValueError(f"max_runtime_minutes must be a positive whole number, got {max_runtime_minutes!r}")
    values = {
        "ENV": shlex.quote(env),
        "BUCKET": shlex.quote(bucket),
        "RUN_ID": shlex.quote(run_id),
        "GROUP": shlex.quote(group_name(run_id)),
        "REGION": shlex.quote(region),
        "MAX_RUNTIME_MINUTES": str(max_runtime_minutes),
        "UV_VERSION": UV_VERSION,
        "PYTHON_BUILD": PYTHON_BUILD,
        "AWSCLI_VERSION": AWSCLI_VERSION,
    }
    script = template()
    for name, value in values.items():
        script = script.replace(f"@@{name}@@", value)
    leftover = re.search(r"@@[A-Z_]+@@", script)
    if leftover:
        raise RuntimeError(f"bootstrap.sh has a placeholder nobody fills: {leftover.group(0)}")
    if len(script.encode()) > USER_DATA_LIMIT:
        raise RuntimeError("the rendered bootstrap exceeds the 16 KB user-data limit")
    return script
