"""The user's GitHub workflow cannot run here; check its structure and its promises instead."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pulumi-preview.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def uses(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def test_runs_on_pull_requests(workflow):
    triggers = workflow[True]  # PyYAML reads the bare key `on` as the boolean True
    assert "pull_request" in triggers


def test_test_job_runs_make_test(workflow):
    runs = [s.get("run", "") for s in steps(workflow, "test")]
    assert "make test" in runs
    assert [uses(s) for s in steps(workflow, "test")][:2] == ["actions/checkout", "actions/setup-python"]


def test_preview_job_runs_pulumi_preview_after_the_tests(workflow):
    job = workflow["jobs"]["preview"]
    assert job["needs"] == "test"
    pulumi = [s for s in job["steps"] if uses(s) == "pulumi/actions"]
    assert len(pulumi) == 1
    assert pulumi[0]["with"]["command"] == "preview"
    assert pulumi[0]["with"]["stack-name"] == "dev"
    assert (ROOT / f"Pulumi.{pulumi[0]['with']['stack-name']}.yaml").exists()


def test_credentials_come_from_repository_secrets(workflow):
    preview = steps(workflow, "preview")
    aws = next(s for s in preview if uses(s) == "aws-actions/configure-aws-credentials")
    assert aws["with"]["aws-access-key-id"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
    assert aws["with"]["aws-secret-access-key"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    pulumi = next(s for s in preview if uses(s) == "pulumi/actions")
    assert pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert pulumi["with"]["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"


def test_no_credential_is_written_in_the_file():
    text = WORKFLOW.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"pul-[0-9a-f]{40}", text)


def test_every_secret_used_is_documented(workflow):
    used = set(re.findall(r"secrets\.([A-Z_]+)", WORKFLOW.read_text())) - {"GITHUB_TOKEN"}
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert used and not [name for name in used if name not in doc]


def test_permissions_are_minimal(workflow):
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_preview_installs_the_pinned_pulumi_sdks(workflow):
    install = next(s["run"] for s in steps(workflow, "preview") if "pip install" in s.get("run", ""))
    pattern = re.search(r"grep -E '([^']+)' requirements.txt", install).group(1)
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if re.match(pattern, line)]
    assert sorted(p.split("==")[0] for p in pins) == ["pulumi", "pulumi-aws"]
