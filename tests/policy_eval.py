"""Read an IAM policy the way IAM does for one action on one resource, conditions included as
data: the tests ask which statements grant a call and what those statements require. This is
how the conditions that moto cannot evaluate (docs/reliability.md) are checked."""
from __future__ import annotations

import re

from automation.sandbox.strictmoto import glob_to_regex


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def granting(policy: dict, action: str, resource: str) -> list[dict]:
    """The Allow statements whose Action and Resource match (wildcards as IAM reads them)."""
    found = []
    for statement in _as_list(policy["Statement"]):
        if statement["Effect"] != "Allow":
            continue
        if not any(re.match(glob_to_regex(a), action) for a in _as_list(statement["Action"])):
            continue
        if any(re.match(glob_to_regex(r), resource) for r in _as_list(statement.get("Resource", "*"))):
            found.append(statement)
    return found


def allowed(policy: dict, action: str, resource: str, context: dict | None = None) -> bool:
    """Granted by a statement whose conditions (StringEquals, StringLike, ArnEquals, ArnLike on
    single keys) all hold in `context`; a condition on a key the context lacks does not hold."""
    context = context or {}
    return any(_conditions_hold(s.get("Condition", {}), context) for s in granting(policy, action, resource))


def _conditions_hold(conditions: dict, context: dict) -> bool:
    for operator, pairs in conditions.items():
        for key, expected in pairs.items():
            if key not in context:
                return False
            value = context[key]
            patterns = _as_list(expected)
            if operator in ("StringEquals", "ArnEquals"):
                if value not in patterns:
                    return False
            elif operator in ("StringLike", "ArnLike"):
                if not any(re.match(glob_to_regex(p), value) for p in patterns):
                    return False
            else:
                raise AssertionError(f"the test evaluator does not know {operator}")
    return True
