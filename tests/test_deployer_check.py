"""The conftest check that nobody acts as the deployer outside seeding, run on deliberately bad
tests in a pytest of their own: each way of handing the deployer's keys to the environment or
a subprocess fails at the line that does it, even when undone before the test ends."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.cli_helpers import REPO

CASES = '''
import os
import subprocess
import sys

from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.aws import AwsTarget
from tests.conftest import administrator_shell

PRINT_KEY = [sys.executable, "-c", "import os; print(os.environ.get('AWS_ACCESS_KEY_ID'))"]


def test_monkeypatched_and_undone(monkeypatch):
    for name, value in DEPLOYER.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.undo()


def test_set_and_restored_by_hand():
    before = os.environ.get("AWS_ACCESS_KEY_ID")
    os.environ.update(DEPLOYER.env())
    os.environ["AWS_ACCESS_KEY_ID"] = before or "none"


def test_handed_to_a_subprocess():
    subprocess.run(PRINT_KEY, env={**os.environ, **DEPLOYER.env()}, check=True)


def test_named_to_seed():
    assert AwsTarget("us-east-1", "http://127.0.0.1:1", DEPLOYER.credentials).credentials[0] == DEPLOYER.access_key_id


def test_an_administrator_s_shell_by_name():
    with administrator_shell("a person holding administrator keys"):
        out = subprocess.run(PRINT_KEY, env={**os.environ, **DEPLOYER.env()}, capture_output=True, text=True)
    assert out.stdout.strip() == DEPLOYER.access_key_id
'''


def test_the_check_fails_each_test_that_hands_the_deployer_s_keys_on(tmp_path):
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(CASES))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "test_cases.py"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    outcomes = {line.split(" ")[1].split("::")[1]: line.split(" ")[0]
                for line in out.splitlines() if line.startswith(("PASSED ", "FAILED "))}
    assert outcomes == {
        "test_monkeypatched_and_undone": "FAILED",
        "test_set_and_restored_by_hand": "FAILED",
        "test_handed_to_a_subprocess": "FAILED",
        "test_named_to_seed": "PASSED",
        "test_an_administrator_s_shell_by_name": "PASSED",
    }, out
    assert out.count("DeployerKeysInAnEnvironment: the deployer's keys went into this process's environment") == 2, out
    assert out.count("DeployerKeysInAnEnvironment: the deployer's keys went into a subprocess's environment") == 1, out
