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


def test_a_busy_sandbox_is_waited_for_and_a_dead_one_is_not(monkeypatch):
    """Sixteen launches at once keep moto's one GIL busy: a probe that took the connection but got
    no answer within half a second is not a dead sandbox (the launch failed with "does not answer",
    or, without CHRONOS_SANDBOX_URL, would start a second server). Nobody listening is a no at once."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from automation.sandbox import control, motoserver

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("CHRONOS_SANDBOX_URL", url)
        assert control.status() is not None and control.status().endpoint_url == url
    finally:
        server.shutdown()
        server.server_close()
    started = time.monotonic()
    assert not motoserver.is_up(f"http://127.0.0.1:{motoserver.free_port()}", patience_s=30)
    assert time.monotonic() - started < 1, "a refused connection is not waited on"
