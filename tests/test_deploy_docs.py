"""docs/deploy.md tells an operator what to attach: its operator-policy table must be the policy
the stack deploys, statement by statement, or someone who copies it into their own policy
cannot launch (or grants more than a run needs)."""
from __future__ import annotations

import re
from pathlib import Path

from automation.stacks.policies import operator_policy

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
ACTION = re.compile(r"`([a-z0-9-]+:[A-Za-z0-9*]+)`")


def documented(page: Path = DEPLOY) -> dict[str, set[str]]:
    """The operator table's rows: statement id -> the actions its row names."""
    text = page.read_text()
    head = text.index("| statement | actions | scope |")
    rows: dict[str, set[str]] = {}
    for line in text[head:].splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        sid, actions, _scope = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[sid.strip("`")] = set(ACTION.findall(actions))
    return rows


def deployed() -> dict[str, set[str]]:
    policy = operator_policy("arn:aws:s3:::bucket", "dev", "us-east-1", "123456789012", "vpc-0", "arn:role",
                             "arn:profile", "/aws/service/ami")
    return {st["Sid"]: set([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
            for st in policy["Statement"]}


def test_the_operator_table_is_the_deployed_policy_statement_by_statement():
    docs, policy = documented(), deployed()
    assert set(docs) == set(policy), f"rows without a statement: {set(docs) - set(policy)}; " \
                                     f"statements without a row: {set(policy) - set(docs)}"
    wrong = {sid: (sorted(docs[sid] - policy[sid]), sorted(policy[sid] - docs[sid]))
             for sid in policy if docs[sid] != policy[sid]}
    assert not wrong, f"(documented but not granted, granted but not documented) by statement: {wrong}"


def test_the_check_itself_sees_a_missing_or_extra_action(tmp_path):
    text = DEPLOY.read_text()
    altered = text.replace("`ec2:DescribeLaunchTemplates`, ", "").replace(
        "| `ReadAmiParameter` | `ssm:GetParameter` |", "| `ReadAmiParameter` | `ssm:GetParameter`, `ssm:GetParameters` |")
    assert altered != text
    copy = tmp_path / "deploy.md"
    copy.write_text(altered)
    docs, policy = documented(copy), deployed()
    assert policy["Describe"] - docs["Describe"] == {"ec2:DescribeLaunchTemplates"}
    assert docs["ReadAmiParameter"] - policy["ReadAmiParameter"] == {"ssm:GetParameters"}
