"""What EC2 and Auto Scaling do for a run's machines on AWS, played on this machine for --local.

One detached process per run (`python -m automation.executors.localgroup RUN_DIR`), started by
the local executor and living as long as the run's group wants a machine:
- the group itself is the sandbox's (moto's Auto Scaling): its desired capacity and instances.
  The agent and the CLI change it with the calls they make on AWS (detach, desired 0);
- every machine the group has gets an agent process (the machine's boot), holding the instance
  role's credentials for that instance and nothing else;
- a machine whose agent exited powers off, on the worse reading (automation/sandbox/poweroff.py):
  unless the agent ended it through EC2 first, it is `stopped`, not terminated. While the group
  still wants a machine, a member that is not running (stopped, or terminated behind its back) is
  replaced, as the group's health check does on AWS;
- instance metadata: an IMDSv2 endpoint per machine (its id, type and zone, as the group
  launched it). `chronos-train --local sandbox interrupt`
  leaves a request file; the machine's metadata then answers spot/instance-action and, once the
  notice period is over, the machine is taken (its agent killed), as EC2 reclaims spot capacity.
  With `--rebalance` it answers events/recommendations/rebalance instead, and nothing is taken
  (moto's group does no capacity rebalancing).
The process ends once the group wants no machine and none is left, or the group is gone.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

SPEC = "group.json"
PLAYER_PID = "group.pid"
AGENT_PID = "agent.pid"  # the current machine's agent (kill and finalize read it)
ENDED = "ended"  # beside a machine's agent.pid once its end is played (power-off, health check)
INTERRUPT = "interrupt"  # `sandbox interrupt` writes it; the player takes it
REBALANCE = "rebalance"  # `sandbox interrupt --rebalance` writes it
POLL_S = 0.2
# A group is taken as deleted once it is missing from this many looks in a row: one empty answer
# (seen once under load, with other calls of the moment refused too) must not end a live machine.
GONE_AFTER_LOOKS = 3
# Every call failing for this long means the sandbox itself was stopped (`sandbox stop`, or a test
# session's server gone): the player then ends its agents and itself instead of polling forever.
SANDBOX_GONE_S = 120.0


@dataclass(frozen=True)
class GroupSpec:
    """Everything the player needs to boot a machine of the run, written by the executor."""

    run_id: str
    env: str
    bucket: str
    region: str
    endpoint_url: str
    code_dir: str
    max_runtime_minutes: int
    notice_seconds: float
    inherited_env: dict[str, str]
    boot_seconds: float = 0.0

    def save(self, run_dir: Path) -> None:
        (run_dir / SPEC).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, run_dir: Path) -> "GroupSpec":
        return cls(**json.loads((run_dir / SPEC).read_text()))


def request_interrupt(run_dir: Path, rebalance: bool = False) -> None:
    (run_dir / (REBALANCE if rebalance else INTERRUPT)).write_text(str(time.time()))


def start_player(run_dir: Path, env: dict[str, str]) -> int:
    with open(run_dir / "group.stdout", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "automation.executors.localgroup", str(run_dir)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    (run_dir / PLAYER_PID).write_text(str(proc.pid))
    return proc.pid


# -- instance metadata ----------------------------------------------------------------------------
class Metadata:
    """IMDSv2 for every machine of the run, at http://127.0.0.1:PORT/<instance-id>/latest/..."""

    def __init__(self):
        self.facts: dict[str, dict[str, str]] = {}  # per machine: meta-data path -> value, as EC2 launched it
        self.notices: dict[str, dict] = {}
        self.rebalances: dict[str, dict] = {}
        self._tokens: set[str] = set()
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if self.path.endswith("/latest/api/token"):
                    token = uuid.uuid4().hex
                    meta._tokens.add(token)
                    return self._answer(200, token)
                return self._answer(404)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in meta._tokens:
                    return self._answer(401)
                instance_id, _, path = self.path.lstrip("/").partition("/")
                if path == "latest/meta-data/instance-id":
                    return self._answer(200, instance_id)
                fact = meta.facts.get(instance_id, {}).get(path.removeprefix("latest/meta-data/"))
                if fact:
                    return self._answer(200, fact)
                if path == "latest/meta-data/spot/instance-action" and instance_id in meta.notices:
                    return self._answer(200, json.dumps(meta.notices[instance_id]))
                if path == "latest/meta-data/events/recommendations/rebalance" and instance_id in meta.rebalances:
                    return self._answer(200, json.dumps(meta.rebalances[instance_id]))
                return self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="imds", daemon=True).start()

    def endpoint(self, instance_id: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{instance_id}"

    def notify(self, instance_id: str, seconds: float) -> None:
        at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        self.notices[instance_id] = {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def recommend_rebalance(self, instance_id: str) -> None:
        self.rebalances[instance_id] = {"noticeTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


# -- the player -----------------------------------------------------------------------------------
class Player:
    def __init__(self, run_dir: Path):
        from instance.protocol.aws import AwsTarget, client

        from ..sandbox.strictmoto import EC2_SERVICE

        self.run_dir = run_dir
        self.spec = GroupSpec.load(run_dir)
        target = AwsTarget(self.spec.region, self.spec.endpoint_url, EC2_SERVICE.credentials)
        self.autoscaling, self.ec2 = client("autoscaling", target), client("ec2", target)
        self.metadata = Metadata()
        self.agents: dict[str, subprocess.Popen] = {}
        self.members: set[str] = set()  # the group's instances when last seen
        self.ended: set[str] = set()
        self.seen_at: dict[str, float] = {}  # when each machine first appeared (it boots for boot_seconds)
        self.reclaim_at: dict[str, float] = {}
        self.missing = 0  # consecutive looks that did not find the group

    def run(self) -> None:
        failing_since = None
        while True:
            try:
                if self._step():
                    return
                failing_since = None
            except Exception as exc:  # noqa: BLE001 - the service keeps going through a failed call
                log.warning("group step failed (%s: %s); trying again", type(exc).__name__, exc)
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > SANDBOX_GONE_S or not self.run_dir.exists():
                    # The sandbox (its moto server) or the run's folder is gone: nothing here can
                    # run the machines any more, and nothing else would end their agents.
                    log.warning("the sandbox has not answered for %.0f s; ending the run's machines", SANDBOX_GONE_S)
                    for proc in self.agents.values():
                        _kill(proc)
                    return
            time.sleep(POLL_S)

    def _step(self) -> bool:
        """One look at the group and its machines; True once nothing is left to play."""
        from instance.protocol.group import describe_group

        group = describe_group(self.autoscaling, self.spec.run_id)
        if group is None:
            self.missing += 1
        else:
            self.missing = 0
        if group is None and self.missing >= GONE_AFTER_LOOKS:
            # A deleted group takes its instances with it; one detached from it lives on.
            self._take(self.members)
            self._reap()
            return not self.agents
        if group is None:
            return False  # not seen once: look again before ending its machines
        members = self.members = {i["InstanceId"] for i in group.get("Instances", [])
                                  if i.get("LifecycleState") == "InService"}
        ended_now = self._reap()
        if members & self.ended:
            self._health_check(members)
        for instance_id in ended_now:
            (self.run_dir / "agents" / instance_id / ENDED).write_text("")
        self._interrupt()
        for instance_id in sorted(members - set(self.agents) - self.ended):
            first = self.seen_at.setdefault(instance_id, time.monotonic())
            if time.monotonic() - first >= self.spec.boot_seconds:
                self._boot(instance_id)
        return int(group.get("DesiredCapacity", 0)) == 0 and not self.agents and not (members - self.ended)

    def _boot(self, instance_id: str) -> None:
        from instance.protocol.aws import AwsTarget

        from ..sandbox.control import instance_credentials

        agent_dir = self.run_dir / "agents" / instance_id
        agent_dir.mkdir(parents=True, exist_ok=True)
        spec = self.spec
        [machine] = [i for r in self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
                     for i in r["Instances"]]
        self.metadata.facts[instance_id] = {"instance-type": machine["InstanceType"],
                                            "placement/availability-zone": machine["Placement"]["AvailabilityZone"]}
        env = {
            **spec.inherited_env,
            **instance_credentials(AwsTarget(spec.region, spec.endpoint_url), spec.env, instance_id),
            "AWS_ENDPOINT_URL": spec.endpoint_url,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.metadata.endpoint(instance_id),
            "XDG_CACHE_HOME": str(self.run_dir / "cache"),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable, "-m", "instance.agent",
            "--env", spec.env, "--bucket", spec.bucket, "--run-id", spec.run_id,
            "--region", spec.region, "--endpoint-url", spec.endpoint_url,
            "--instance-id", instance_id, "--local", "--work-dir", str(agent_dir / "work"),
            # What the bootstrap hands over on EC2: the dead-man switch's time, on this clock.
            "--shutdown-at", str(int(time.time()) + spec.max_runtime_minutes * 60),
        ]
        with open(self.run_dir / "agent.stdout", "ab") as out:
            proc = subprocess.Popen(cmd, cwd=spec.code_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.agents[instance_id] = proc
        (agent_dir / AGENT_PID).write_text(str(proc.pid))  # this machine's agent, for the CLI's reconcile
        (self.run_dir / AGENT_PID).write_text(str(proc.pid))
        log.info("machine %s booted: agent pid %d", instance_id, proc.pid)

    def _reap(self) -> list[str]:
        """Machines whose agent exited power off: stopped, unless the agent ended them through EC2."""
        from ..sandbox.poweroff import power_off

        reaped = []
        for instance_id, proc in list(self.agents.items()):
            if proc.poll() is None:
                continue
            del self.agents[instance_id]
            self.ended.add(instance_id)
            self.reclaim_at.pop(instance_id, None)
            state = power_off(self.ec2, instance_id)
            log.info("machine %s: agent exited with %s; the machine powers off: %s", instance_id, proc.returncode,
                     state)
            reaped.append(instance_id)
        return reaped

    def _health_check(self, members: set[str]) -> None:
        from instance.protocol.group import describe_group

        from ..sandbox.poweroff import replace_unhealthy

        group = describe_group(self.autoscaling, self.spec.run_id)  # as it is after the power-offs
        for instance_id in replace_unhealthy(self.autoscaling, self.ec2, group or {}, members & self.ended):
            log.info("machine %s is not running: the group replaces it", instance_id)

    def _interrupt(self) -> None:
        advice = self.run_dir / REBALANCE
        if advice.exists():
            advice.unlink()
            for instance_id in [i for i, p in self.agents.items() if p.poll() is None]:
                log.info("rebalance recommendation for machine %s (it is not taken)", instance_id)
                self.metadata.recommend_rebalance(instance_id)
        request = self.run_dir / INTERRUPT
        if request.exists():
            request.unlink()
            live = [i for i, p in self.agents.items() if p.poll() is None and i not in self.reclaim_at]
            for instance_id in live:
                log.info("spot notice for machine %s: taken in %.0f s", instance_id, self.spec.notice_seconds)
                self.metadata.notify(instance_id, self.spec.notice_seconds)
                self.reclaim_at[instance_id] = time.monotonic() + self.spec.notice_seconds
        for instance_id, at in list(self.reclaim_at.items()):
            proc = self.agents.get(instance_id)
            if proc is not None and time.monotonic() >= at and proc.poll() is None:
                log.info("machine %s reclaimed", instance_id)
                _kill(proc)
                self.ec2.terminate_instances(InstanceIds=[instance_id])  # EC2 takes it back: terminated

    def _take(self, instance_ids: set[str]) -> None:
        for instance_id in sorted(instance_ids & set(self.agents)):
            _kill(self.agents.pop(instance_id))
            self.ended.add(instance_id)
            self.ec2.terminate_instances(InstanceIds=[instance_id])  # a deleted group ends its machines
        self.members = set()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    run_dir = Path((argv or sys.argv[1:])[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s group %(message)s")
    log.info("playing EC2 and Auto Scaling for %s (pid %d)", run_dir.name, os.getpid())
    Player(run_dir).run()
    log.info("the group wants no machine: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
