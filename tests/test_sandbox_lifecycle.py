"""The sandbox as `make demo` and a user's shell meet it: no CHRONOS_SANDBOX_URL, so `--local`
starts its own detached moto server, records it under CHRONOS_HOME, and `sandbox start`,
`status`, `stop` and a restart behave as their help says."""
from __future__ import annotations

import json
import urllib.request

import pytest

from instance.protocol.processes import pid_alive
from tests.cli_helpers import cli_env, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def own_sandbox(tmp_path):
    env = cli_env("unused", tmp_path / "home")
    env.pop("CHRONOS_SANDBOX_URL")
    yield env
    run_cli(env, "sandbox", "stop")  # whatever a failed assertion left running


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def test_start_status_stop_and_restart_with_no_sandbox_url(own_sandbox, tmp_path):
    env = own_sandbox
    down = run_cli(env, "sandbox", "status")
    assert down.returncode == 1 and "not running" in down.stdout

    started = run_cli(env, "sandbox", "start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("sandbox running at http://127.0.0.1:")
    info = json.loads(run_cli(env, "sandbox", "status", "--json").stdout)
    assert pid_alive(info["pid"]) and _answers(info["endpoint_url"])
    assert info["bucket"] == "chronos-training-dev-123456789012-us-east-1" and info["AWS_ACCESS_KEY_ID"]
    record = json.loads((tmp_path / "home" / "sandbox" / "sandbox.json").read_text())
    assert (record["endpoint_url"], record["pid"]) == (info["endpoint_url"], info["pid"])

    # Seeded as `pulumi up` would have left it, and IAM on: the CLI works as the operator.
    assert run_cli(env, "--local", "data", "ls").returncode == 0
    again = run_cli(env, "sandbox", "start")
    assert again.returncode == 0 and info["endpoint_url"] in again.stdout, "a second start is a no-op"

    stopped = run_cli(env, "sandbox", "stop")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "sandbox stopped"
    assert not pid_alive(info["pid"]) and not _answers(info["endpoint_url"])
    assert run_cli(env, "sandbox", "status").returncode == 1
    assert run_cli(env, "sandbox", "stop").stdout.strip() == "sandbox was not running"

    # Any --local command starts it again, as `make demo` relies on; everything in it is new.
    listed = run_cli(env, "--local", "runs", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    restarted = json.loads(run_cli(env, "sandbox", "status", "--json").stdout)
    assert restarted["pid"] != info["pid"] and pid_alive(restarted["pid"])
