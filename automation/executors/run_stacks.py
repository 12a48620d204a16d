"""Run stacks in the bucket's DIY backend, through the Pulumi Automation API.

This is the seam between the EC2 executor and Pulumi: the executor only sees `StackOps`, so its
orchestration (zone fallback, cleanup on failure, error kinds) is tested with a fake. pulumi is
imported inside the methods: the CLI's reading commands import this package and must stay free
of it. Listing stacks reads the backend's objects in S3 directly, so verify-cleanup needs no
Pulumi CLI.

What the Pulumi CLI gets is ours, whatever the user's shell holds:
- the backend: PULUMI_BACKEND_URL beats a project's `backend.url` (it is used "instead of the
  currently logged in backend or the current project's backend", pulumi creds.go), so it is
  pinned to the bucket's backend for every call;
- the passphrase: run stacks hold no secrets and use the empty one, pinned, so a passphrase
  exported for the persistent stack never leaks in (PULUMI_CONFIG_PASSPHRASE, even empty, is
  read before PULUMI_CONFIG_PASSPHRASE_FILE) and any shell can destroy what another created;
- the work dir: one temporary folder per call, removed after it (LocalWorkspace would leave an
  `automation-*` folder behind on every call);
- Ctrl-C: the CLI runs in its own session, so the terminal's SIGINT reaches only us; we forward
  one SIGINT (the CLI's graceful cancel: it lets in-flight operations finish, records them and
  releases its lock), keep reading its output until it exits, then raise KeyboardInterrupt so
  the executor can destroy what was made;
- errors: told apart by the AWS error code in the engine's structured diagnostic events (an
  error-severity diagnostic attached to a resource URN), not by searching the CLI's text.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

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
# The oldest CLI that runs refresh and destroy with an inline program (`--client`, Pulumi
# 3.181.0); the Automation API refuses older ones, and `doctor` says so before a launch does.
MIN_PULUMI_CLI = (3, 181, 0)
# The AWS SDK for Go v2 (the provider's SDK) formats a service error as
# "operation error <Service>: <Operation>, https response error StatusCode: <n>, RequestID: <id>,
# api error <Code>: <message>". The code is that field; nothing else in the text is read.
_API_ERROR_CODE = re.compile(r"\bapi error ([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*): ")
# The same format's "operation error <Service>: <Operation>," names the call that was refused.
_API_OPERATION = re.compile(r"\boperation error ([A-Za-z][A-Za-z0-9 ]*): ([A-Za-z0-9]+), https response error ")
# How the provider (pulumi-aws 7, through the Terraform bridge) frames a resource's error:
# "sdk-v2/provider2.go:572: sdk.helper_schema: <error>: provider=aws@7.x.y"; older versions
# "1 error occurred:\n\t* <error>". Only dropped for people; nothing is classified by it.
_PROVIDER_FRAMING = (re.compile(r"^\s*\d+ errors? occurred:\s*"), re.compile(r"^\s*sdk-v2/\S+: sdk\.helper_schema:\s*"),
                     re.compile(r":\s*provider=[a-z0-9-]+@[0-9][^\s]*\s*$"))


def _credential_env(credentials: tuple[str, str, str | None] | None) -> dict[str, str]:
    if credentials is None:
        return {}
    key, secret, token = credentials
    # An empty token counts as none for the AWS SDKs; a shell's own token must not pair with these keys.
    # Keys in the environment come before a profile in both SDKs' chains.
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token or ""}


class ToolingMissing(RuntimeError):
    """The Pulumi CLI is absent or unusable; the message says how to fix it."""


class StackMissing(LookupError):
    """The run's stack is not in the backend (already removed, or never created)."""


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic event of the engine: its severity, the resource it is about, its text."""

    severity: str
    message: str
    urn: str = ""

    @property
    def summary(self) -> str:
        """The message on one line, without the provider's framing around the AWS error."""
        text = self.message
        for framing in _PROVIDER_FRAMING:
            text = framing.sub("", text)
        return " ".join(text.replace("* ", " ").split())[:400]

    @property
    def aws_error_code(self) -> str | None:
        """The AWS error code of a resource's error diagnostic; None for anything else."""
        if self.severity != "error" or not self.urn:
            return None
        found = _API_ERROR_CODE.search(self.message)
        return found.group(1) if found else None

    @property
    def aws_operation(self) -> str | None:
        """The AWS call a resource's error diagnostic reports refused ("Auto Scaling
        CreateAutoScalingGroup"); None for anything else."""
        if self.aws_error_code is None:
            return None
        found = _API_OPERATION.search(self.message)
        return f"{found.group(1)} {found.group(2)}" if found else None


class StackCommandFailed(RuntimeError):
    """A Pulumi command failed. `diagnostics` are the engine's error events (where the AWS error
    code comes from); str() is one line for people: the failing resource's own error, else the
    CLI's error line."""

    def __init__(self, cli_text: str, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...] = ()):
        self.diagnostics = list(diagnostics)
        on_resource = [d for d in self.diagnostics
                       if d.severity == "error" and d.urn and "::pulumi:pulumi:Stack::" not in d.urn]
        super().__init__(on_resource[0].summary if on_resource else _first_error_line(cli_text))

    @property
    def aws_error_codes(self) -> list[str]:
        return [c for c in (d.aws_error_code for d in self.diagnostics) if c]

    @property
    def aws_operations(self) -> list[str]:
        return [o for o in (d.aws_operation for d in self.diagnostics) if o]


@dataclass(frozen=True)
class PlannedStep:
    op: str  # create, update, replace, delete, same...
    type: str  # aws:autoscaling/group:Group
    name: str
    inputs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """What `pulumi preview` of a run stack would do, from the engine's events."""

    steps: list[PlannedStep]
    changes: dict[str, int]


class StackOps(Protocol):
    """What the EC2 executor needs from Pulumi, one run stack at a time (stack name = run id)."""

    def up(self, stack: str, cfg: "RunStackConfig") -> dict[str, Any]:
        """Create or update the stack; returns its outputs (instance_id, zone)."""

    def preview(self, cfg: "RunStackConfig") -> Preview:
        """Preview a run stack in a throwaway local backend: no lock, nothing in the bucket."""

    def refresh(self, stack: str) -> None: ...

    def destroy(self, stack: str) -> None: ...

    def remove_stack(self, stack: str) -> None: ...

    def cancel(self, stack: str) -> None:
        """Remove a lock an interrupted CLI left on the stack (`pulumi cancel`)."""

    def list_stacks(self) -> list[str]: ...


def _noop_program() -> None:
    """Refresh and destroy work from the recorded state; they need no program."""


def _pulumi_command_class():
    """PulumiCommand whose `run` survives Ctrl-C (defined lazily: pulumi is imported late)."""
    from pulumi.automation import PulumiCommand

    class InterruptibleCommand(PulumiCommand):
        """Runs the CLI in its own session; a KeyboardInterrupt here becomes one SIGINT to the CLI
        (a second one stops it at once), and the pipes stay open until it has exited, so it can
        finish its cancel, write its state and release its lock."""

        def run(self, args, cwd, additional_env, on_output=None, on_error=None):
            from pulumi.automation._cmd import CommandResult
            from pulumi.automation.errors import create_command_error

            args = list(args)
            end = args.index("--") if "--" in args else len(args)
            if "--non-interactive" not in args[:end]:
                args.insert(0, "--non-interactive")
            env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
            proc = subprocess.Popen([self.command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, encoding="utf-8",
                                    start_new_session=True)
            out: list[str] = []
            err: list[str] = []
            readers = [threading.Thread(target=_drain, args=(proc.stdout, on_output, out), daemon=True),
                       threading.Thread(target=_drain, args=(proc.stderr, on_error, err), daemon=True)]
            for reader in readers:
                reader.start()
            interrupts = 0
            while True:
                try:
                    proc.wait()
                    break
                except KeyboardInterrupt:
                    interrupts += 1
                    log.warning("Ctrl-C: Pulumi is cancelling and will record what it made, then it is removed"
                                if interrupts == 1 else "Ctrl-C again: Pulumi stops at once")
                    proc.send_signal(signal.SIGINT)
            for reader in readers:
                reader.join()
            if interrupts:
                raise KeyboardInterrupt
            result = CommandResult(stdout="\n".join(out), stderr="\n".join(err), code=proc.returncode)
            if proc.returncode != 0:
                raise create_command_error(result)
            return result

    return InterruptibleCommand


def _drain(stream, callback, lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        line = line.rstrip()
        if callback:
            callback(line)
        lines.append(line)
    stream.close()


class EngineLog:
    """Reads the engine's events: error diagnostics, planned steps and progress lines."""

    def __init__(self, progress: Callable[[str], None] | None = None):
        self.progress = progress
        self.diagnostics: list[Diagnostic] = []
        self.steps: list[PlannedStep] = []
        self.changes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            if event.diagnostic_event is not None:
                d = event.diagnostic_event
                self.diagnostics.append(Diagnostic(d.severity or "", d.message or "", d.urn or ""))
            if event.resource_pre_event is not None:
                meta = event.resource_pre_event.metadata
                step = PlannedStep(str(getattr(meta.op, "value", meta.op)), meta.type, meta.urn.rsplit("::", 1)[-1],
                                   dict((meta.new.inputs if meta.new else None) or {}))
                self.steps.append(step)
                self._say(step.op, step.type, step.name, "")
            if event.res_outputs_event is not None:
                meta = event.res_outputs_event.metadata
                self._say(str(getattr(meta.op, "value", meta.op)), meta.type, meta.urn.rsplit("::", 1)[-1], " done")
            if event.summary_event is not None:
                self.changes = {str(getattr(k, "value", k)): v for k, v in event.summary_event.resource_changes.items()}

    def _say(self, op: str, typ: str, name: str, suffix: str) -> None:
        if self.progress and op != "same" and not typ.startswith("pulumi:pulumi:Stack"):
            self.progress(f"pulumi: {op} {typ} {name}{suffix}")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def _failure(exc: Exception, events: EngineLog) -> StackCommandFailed:
    return StackCommandFailed(str(exc), events.errors)


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line.lower():
            return line[:300]
    return (lines[-1] if lines else "no output")[:300]


class PulumiStackOps:
    """The real seam: one LocalWorkspace (and work dir) per call, state under
    s3://{bucket}/{env}/pulumi, the CLI's environment pinned."""

    def __init__(self, bucket: str, env: str, region: str, target: AwsTarget | None = None,
                 progress: Callable[[str], None] | None = None):
        self.bucket, self.env, self.region = bucket, env, region
        self.target = target or AwsTarget(region=region)
        self.progress = progress
        self._command = None
        self._plugin_ready = False

    @property
    def backend_url(self) -> str:
        # The region in the URL keeps the backend independent of the caller's AWS_REGION.
        prefix = Layout(self.env).pulumi_prefix.rstrip("/")
        return f"s3://{self.bucket}/{prefix}?region={self.region}"

    def env_vars(self, backend_url: str | None = None) -> dict[str, str]:
        """The CLI's environment over the shell's: what must not come from the user's shell."""
        return {
            "PULUMI_BACKEND_URL": backend_url or self.backend_url,
            "PULUMI_CONFIG_PASSPHRASE": "",
            "PULUMI_CONFIG_PASSPHRASE_FILE": "",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "AWS_REGION": self.region,
            # The provider acts as whoever the CLI acts as, not as whatever the shell holds.
            **_credential_env(self.target.credentials),
        }

    def _pulumi(self):
        if self._command is None:
            if shutil.which("pulumi") is None:
                raise ToolingMissing(INSTALL_HINT)
            from pulumi import automation as auto

            from semver import VersionInfo

            try:
                self._command = _pulumi_command_class()(version=VersionInfo(*MIN_PULUMI_CLI))
            except (FileNotFoundError, PermissionError):
                raise ToolingMissing(INSTALL_HINT) from None
            except auto.InvalidVersionError as exc:
                raise ToolingMissing(
                    f"the installed Pulumi CLI cannot run this program ({exc}); upgrade it with "
                    "`curl -fsSL https://get.pulumi.com | sh`, or run with `chronos-train --local`"
                ) from None
        return self._command

    @contextmanager
    def _stack(self, name: str, program: Callable[[], None] | None = None,
               backend_url: str | None = None) -> Iterator[Any]:
        """The stack in a fresh work dir, removed afterwards. With a program: create or select."""
        command = self._pulumi()
        from pulumi import automation as auto

        work_dir = tempfile.mkdtemp(prefix="chronos-pulumi-")
        try:
            opts = auto.LocalWorkspaceOptions(
                work_dir=work_dir,
                pulumi_command=command,
                project_settings=auto.ProjectSettings(
                    name=RUN_PROJECT, runtime="python",
                    backend=auto.ProjectBackend(url=backend_url or self.backend_url)),
                secrets_provider="passphrase",
                env_vars=self.env_vars(backend_url),
            )
            try:
                if program is None:
                    stack = auto.select_stack(stack_name=name, project_name=RUN_PROJECT, program=_noop_program,
                                              opts=opts)
                else:
                    stack = auto.create_or_select_stack(stack_name=name, project_name=RUN_PROJECT, program=program,
                                                        opts=opts)
            except auto.StackNotFoundError:
                raise StackMissing(name) from None
            yield stack
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _ready(self, stack, cfg: "RunStackConfig") -> None:
        from pulumi import automation as auto

        if not self._plugin_ready:
            # Inline programs do not declare their plugins; pin the one matching pulumi_aws.
            stack.workspace.install_plugin("aws", f"v{metadata.version('pulumi_aws')}")
            self._plugin_ready = True
        stack.set_config("aws:region", auto.ConfigValue(value=cfg.region))

    def up(self, stack: str, cfg: "RunStackConfig") -> dict[str, Any]:
        from pulumi import automation as auto

        from ..stacks.run import build_run_stack

        events = EngineLog(self.progress)
        with self._stack(stack, program=lambda: build_run_stack(cfg)) as handle:
            self._ready(handle, cfg)
            try:
                result = handle.up(on_output=log.debug, on_event=events)
            except auto.CommandError as exc:
                raise _failure(exc, events) from exc
            return {key: out.value for key, out in result.outputs.items()}

    def preview(self, cfg: "RunStackConfig") -> Preview:
        """`pulumi preview` in a file:// backend under a temporary folder: the real CLI and
        provider meet the run program (the AMI lookup included), and nothing is locked or
        written in the bucket."""
        from pulumi import automation as auto

        from ..stacks.run import build_run_stack

        backend = tempfile.mkdtemp(prefix="chronos-preview-")
        events = EngineLog(self.progress)
        try:
            with self._stack(cfg.run_id, program=lambda: build_run_stack(cfg),
                             backend_url=f"file://{backend}") as handle:
                self._ready(handle, cfg)
                try:
                    result = handle.preview(on_output=log.debug, on_event=events)
                except auto.CommandError as exc:
                    raise _failure(exc, events) from exc
        finally:
            shutil.rmtree(backend, ignore_errors=True)
        changes = {str(getattr(k, "value", k)): v for k, v in (result.change_summary or {}).items()}
        return Preview(steps=events.steps, changes=changes or events.changes)

    def _existing(self, stack: str, run: Callable[[Any, EngineLog], None]) -> None:
        from pulumi import automation as auto

        events = EngineLog(self.progress)
        with self._stack(stack) as handle:
            try:
                run(handle, events)
            except auto.StackNotFoundError:
                raise StackMissing(stack) from None
            except auto.CommandError as exc:
                raise _failure(exc, events) from exc

    def refresh(self, stack: str) -> None:
        self._existing(stack, lambda h, events: h.refresh(on_output=log.debug, on_event=events))

    def destroy(self, stack: str) -> None:
        self._existing(stack, lambda h, events: h.destroy(on_output=log.debug, on_event=events))

    def remove_stack(self, stack: str) -> None:
        self._existing(stack, lambda h, events: h.workspace.remove_stack(stack))

    def cancel(self, stack: str) -> None:
        self._existing(stack, lambda h, events: h.cancel())

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
