"""Run stacks in the bucket's DIY backend, through the Pulumi Automation API.

This is the seam between the EC2 executor and Pulumi: the executor only sees `StackOps`, so its
orchestration (zone fallback, cleanup on failure, error kinds) is tested with a fake. pulumi is
imported inside the methods: the CLI's reading commands import this package and must stay free
of it. Listing stacks reads the backend's objects in S3 directly, so verify-cleanup needs no
Pulumi CLI.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Protocol

from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import Layout

if TYPE_CHECKING:
    from ..stacks.run import RunStackConfig

log = logging.getLogger(__name__)

RUN_PROJECT = "chronos-run"
INSTALL_HINT = (
    "the Pulumi CLI is needed to launch on AWS and was not found; install it with "
    "`curl -fsSL https://get.pulumi.com | sh` (then open a new shell), or run on this machine "
    "with `chronos-train --local`"
)


class ToolingMissing(RuntimeError):
    """The Pulumi CLI is absent or unusable; the message says how to fix it."""


class StackMissing(LookupError):
    """The run's stack is not in the backend (already removed, or never created)."""


class StackOps(Protocol):
    """What the EC2 executor needs from Pulumi, one run stack at a time (stack name = run id)."""

    def up(self, stack: str, cfg: "RunStackConfig") -> dict[str, Any]:
        """Create or update the stack; returns its outputs (instance_id, zone)."""

    def refresh(self, stack: str) -> None: ...

    def destroy(self, stack: str) -> None: ...

    def remove_stack(self, stack: str) -> None: ...

    def list_stacks(self) -> list[str]: ...


def _noop_program() -> None:
    """Refresh and destroy work from the recorded state; they need no program."""


class PulumiStackOps:
    """The real seam: one LocalWorkspace per call, state under s3://{bucket}/{env}/pulumi."""

    def __init__(self, bucket: str, env: str, region: str, target: AwsTarget | None = None,
                 on_output: Callable[[str], None] | None = None):
        self.bucket, self.env, self.region = bucket, env, region
        self.target = target or AwsTarget(region=region)
        self.on_output = on_output or log.info
        self._plugin_ready = False

    @property
    def backend_url(self) -> str:
        # The region in the URL keeps the backend independent of the caller's AWS_REGION.
        prefix = Layout(self.env).pulumi_prefix.rstrip("/")
        return f"s3://{self.bucket}/{prefix}?region={self.region}"

    def _env_vars(self) -> dict[str, str]:
        env = {"PULUMI_SKIP_UPDATE_CHECK": "true", "AWS_REGION": self.region}
        # Run stacks hold no secrets; an empty passphrase unless the user chose one.
        if "PULUMI_CONFIG_PASSPHRASE_FILE" not in os.environ:
            env["PULUMI_CONFIG_PASSPHRASE"] = os.environ.get("PULUMI_CONFIG_PASSPHRASE", "")
        return env

    def _stack(self, name: str, program: Callable[[], None] | None = None):
        if shutil.which("pulumi") is None:
            raise ToolingMissing(INSTALL_HINT)
        from pulumi import automation as auto

        opts = auto.LocalWorkspaceOptions(
            project_settings=auto.ProjectSettings(
                name=RUN_PROJECT, runtime="python", backend=auto.ProjectBackend(url=self.backend_url)
            ),
            secrets_provider="passphrase",
            env_vars=self._env_vars(),
        )
        try:
            if program is None:
                return auto.select_stack(stack_name=name, project_name=RUN_PROJECT, program=_noop_program,
                                         opts=opts)
            return auto.create_or_select_stack(stack_name=name, project_name=RUN_PROJECT, program=program,
                                               opts=opts)
        except FileNotFoundError:
            raise ToolingMissing(INSTALL_HINT) from None
        except auto.InvalidVersionError as exc:
            raise ToolingMissing(
                f"the installed Pulumi CLI cannot run this program ({exc}); upgrade it with "
                "`curl -fsSL https://get.pulumi.com | sh`, or run with `chronos-train --local`"
            ) from None
        except auto.StackNotFoundError:
            raise StackMissing(name) from None

    def up(self, stack: str, cfg: "RunStackConfig") -> dict[str, Any]:
        from pulumi import automation as auto

        from ..stacks.run import build_run_stack

        handle = self._stack(stack, program=lambda: build_run_stack(cfg))
        if not self._plugin_ready:
            # Inline programs do not declare their plugins; pin the one matching pulumi_aws.
            handle.workspace.install_plugin("aws", f"v{metadata.version('pulumi_aws')}")
            self._plugin_ready = True
        handle.set_config("aws:region", auto.ConfigValue(value=cfg.region))
        result = handle.up(on_output=self.on_output)
        return {key: out.value for key, out in result.outputs.items()}

    def refresh(self, stack: str) -> None:
        self._stack(stack).refresh(on_output=self.on_output)

    def destroy(self, stack: str) -> None:
        self._stack(stack).destroy(on_output=self.on_output)

    def remove_stack(self, stack: str) -> None:
        from pulumi import automation as auto

        handle = self._stack(stack)
        try:
            handle.workspace.remove_stack(stack)
        except auto.StackNotFoundError:
            raise StackMissing(stack) from None

    def list_stacks(self) -> list[str]:
        """Stack names of this project, read from the backend's objects (no CLI needed)."""
        root = Layout(self.env).pulumi_prefix + ".pulumi/stacks/"
        # Project-scoped layout (.pulumi/stacks/<project>/<stack>.json) and the legacy flat one;
        # `.json.bak` files are backups, not stacks.
        pattern = re.compile(rf"^{re.escape(root)}(?:{re.escape(RUN_PROJECT)}/)?([^/]+)\.json(?:\.gz)?$")
        s3 = client("s3", self.target)
        names: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            for obj in page.get("Contents", []):
                match = pattern.match(obj["Key"])
                if match:
                    names.add(match.group(1))
        return sorted(names)
