"""`import instance` (and the protocol modules) must not pull in heavy or dev-only packages."""
import json
import subprocess
import sys

HEAVY = ["torch", "chronos", "pulumi", "pulumi_aws", "click", "transformers", "pandas", "pyarrow"]


def test_instance_protocol_imports_stay_light():
    code = (
        "import sys, json; import instance, instance.layout, instance.status, instance.state, "
        "instance.artifacts, instance.aws; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert not [m for m in HEAVY if m in loaded]
