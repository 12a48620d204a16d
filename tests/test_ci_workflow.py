"""The user's GitHub workflow cannot run here; check its structure and its promises instead."""
from __future__ import annotations

import json
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


def _dry_run_step(workflow: dict) -> tuple[int, dict]:
    found = [(i, s) for i, s in enumerate(steps(workflow, "preview")) if "--dry-run" in s.get("run", "")]
    assert len(found) == 1, "the preview job runs `chronos-train launch --dry-run` once"
    return found[0]


def test_the_dry_run_runs_after_pulumi_preview_in_the_same_job(workflow):
    index, step = _dry_run_step(workflow)
    preview = next(i for i, s in enumerate(steps(workflow, "preview")) if uses(s) == "pulumi/actions")
    assert preview < index, "after `pulumi preview`, which also leaves the Pulumi CLI on PATH"
    assert re.search(r"chronos-train (--env \S+ )?launch \S+ --dry-run$", step["run"].strip())
    assert "--local" not in step["run"], "the dry run meets the real account and the real Pulumi CLI"


def test_the_dry_run_config_exists_and_is_a_valid_run_config(workflow):
    from instance.protocol.runconfig import load_config

    _, step = _dry_run_step(workflow)
    config = step["env"]["RUN_CONFIG"]
    assert "$RUN_CONFIG" in step["run"]
    cfg = load_config(ROOT / config)
    assert cfg.dataset_in_bucket, "CI has no local dataset to upload: the config names a bucket prefix"


def test_the_dry_run_gets_no_pulumi_secret(workflow):
    """It pins its own backend (a throwaway local one) and an empty passphrase."""
    _, step = _dry_run_step(workflow)
    assert "secrets." not in json.dumps(step)


def test_the_cli_is_installed_before_the_dry_run_from_the_pins(workflow):
    index, _ = _dry_run_step(workflow)
    before = [s.get("run", "") for s in steps(workflow, "preview")[:index]]
    install = next(r for r in before if "-e ." in r)
    pattern = re.search(r"grep -E '([^']+)' requirements.txt", install).group(1)
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if re.match(pattern, line)]
    assert sorted(p.split("==")[0] for p in pins) == sorted(
        ["boto3", "botocore", "s3transfer", "click", "rich", "pydantic", "PyYAML"])
