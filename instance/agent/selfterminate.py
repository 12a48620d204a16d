"""How the machine ends itself: the EC2 API (its role may terminate only itself) and, only when
that fails, an OS shutdown, the last resort: a group's machine that powers off may be stopped
rather than terminated, whatever its launch template says (docs/reliability.md).
Also the instance metadata (IMDSv2) the agent needs on EC2: its instance id and spot notices."""
from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request

from ..protocol.aws import error_code

log = logging.getLogger(__name__)

IMDS_TIMEOUT_S = 2


def _imds() -> str:
    # The variable botocore reads too; the tests point it at a local stand-in.
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")


def _imds_token() -> str:
    req = urllib.request.Request(
        f"{_imds()}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT_S) as resp:
        return resp.read().decode()


def imds_get(path: str) -> str | None:
    """An IMDSv2 value, or None when it does not exist (404)."""
    req = urllib.request.Request(f"{_imds()}/latest/{path}", headers={"X-aws-ec2-metadata-token": _imds_token()})
    try:
        with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT_S) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def instance_id_from_imds() -> str:
    value = imds_get("meta-data/instance-id")
    if not value:
        raise RuntimeError("the instance metadata service has no instance id")
    return value


def machine_facts() -> dict[str, str]:
    """What EC2 gave this machine, which may not be the run config's first choice: the group
    launches any listed type in any zone. Its cost, the spot quote and `monitor` use these."""
    facts = {"instance_type": imds_get("meta-data/instance-type"),
             "zone": imds_get("meta-data/placement/availability-zone")}
    return {k: v for k, v in facts.items() if v}


def spot_interruption_notice() -> str | None:
    """EC2's two-minute warning, e.g. '{"action": "terminate", "time": "..."}', or None."""
    return imds_get("meta-data/spot/instance-action")


def rebalance_recommendation() -> str | None:
    """EC2's word that this spot machine is at elevated risk of interruption, e.g.
    '{"noticeTime": "..."}', or None. It comes before the two-minute notice, if one comes at all."""
    return imds_get("meta-data/events/recommendations/rebalance")


def terminate_instance(ec2, instance_id: str) -> tuple[str, str]:
    """(result, detail) for cleanup_status.json; never raises. One call, no describe first: the
    role may terminate itself and do nothing else, and terminating a machine that is already
    ending is accepted by EC2 (it answers with the current state)."""
    try:
        resp = ec2.terminate_instances(InstanceIds=[instance_id])
        change = resp["TerminatingInstances"][0]
        before, now = change["PreviousState"]["Name"], change["CurrentState"]["Name"]
        if before in ("shutting-down", "terminated"):
            return "done", f"already {before}"
        return "done", f"EC2 accepted the termination ({now})"
    except Exception as exc:
        if error_code(exc).startswith("InvalidInstanceID"):
            return "not_found", f"EC2 has no instance {instance_id}"
        return "error", f"{type(exc).__name__}: {exc}"


def os_shutdown() -> tuple[str, str]:
    """The fallback that needs no permission."""
    try:
        subprocess.run(["shutdown", "-h", "now"], check=True, timeout=30, capture_output=True)
        return "done", "shutdown -h now"
    except Exception as exc:
        return "error", f"shutdown -h now failed: {type(exc).__name__}: {exc}"
