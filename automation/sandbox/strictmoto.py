"""What the sandbox's moto does differently from stock moto, so that it refuses what AWS refuses.

Stock moto (5.2.5) lets every request through unless `INITIAL_NO_AUTH_ACTION_COUNT` is set; with
it set, it checks signatures and evaluates IAM policies for IAM users and assumed roles, but:
- it evaluates every non-S3 action against the resource "*", so a statement scoped to an
  instance or parameter ARN never matches (`resource_of` gives the few actions we call their
  real ARNs, as AWS does);
- it resolves no policy variable (`${ec2:InstanceID}` is the instance whose role signed the
  call; EC2 names an instance role's session after the instance, and so does the sandbox);
- it translates IAM wildcards to regular expressions without escaping (`?` breaks it);
- a trust policy naming a service principal (`ec2.amazonaws.com`) crashes the AssumeRole check:
  the sandbox's EC2 stand-in (`EC2_SERVICE`) is that service;
- it checks a conditional write's precondition and then writes, so two racing conditional
  PUTs can both win (`SerializeConditionalRequests`);
- it evaluates only `StringEquals` on `sts:ExternalId` among conditions: every other `Condition`
  block is ignored (docs/reliability.md lists them and the tests that check them instead);
- it refuses an EC2 call with AccessDenied; EC2 says UnauthorizedOperation;
- it launches every machine an Auto Scaling group wants and records no scaling activity; the
  sandbox's groups launch as AWS's do, short of quota or capacity (grouplaunches.py);
- it answers a GET or HEAD of a missing key with 404 whoever asks. S3 answers 404 only to a
  caller allowed s3:ListBucket on the bucket, else 403 AccessDenied (S3 API reference, GetObject
  and HeadObject, "Permissions"). Such a request carries no `s3:prefix`, so the sandbox counts
  only a ListBucket grant that needs no condition (`may_list_bucket`): the worse of the two
  readings public reports give for a prefix-limited grant;
- it detaches an instance that is not in the group by decrementing the desired capacity anyway
  (to -1 after a machine already left), and fails with a 500 for a group it lacks; Auto Scaling
  answers ValidationError to both (`refuse_foreign_detach`).

The fixed identities below exist from the server's start and again after every reset. Their
keys are not secrets: they open a loopback sandbox and nothing else.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from instance.protocol.layout import KNOWN_ENVS

from . import grouplaunches

SANDBOX_ACCOUNT = "123456789012"


@dataclass(frozen=True)
class Identity:
    user: str
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        """As environment variables (a session token left beside them would be refused: unset it)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    @property
    def credentials(self) -> tuple[str, str, None]:
        return (self.access_key_id, self.secret_access_key, None)

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{SANDBOX_ACCOUNT}:user/{self.user}"


# Who runs `pulumi up` on a real account: an administrator. The sandbox seeds with it.
DEPLOYER = Identity("sandbox-deployer", "AKIACHRONOSDEPLOYER0", "sandbox-deployer-not-a-secret-0000000000")
# The EC2 service: the only principal that may assume a role trusting ec2.amazonaws.com.
EC2_SERVICE = Identity("sandbox-ec2-service", "AKIACHRONOSEC2SVC000", "sandbox-ec2-service-not-a-secret-000000")
# One operator per environment, holding exactly that environment's operator policy once seeded.
OPERATORS = {
    env: Identity(f"chronos-operator-{env}", f"AKIACHRONOSOP{env.upper():0<7}"[:20],
                  f"chronos-operator-{env}-not-a-secret".ljust(40, "0"))
    for env in KNOWN_ENVS
}

_DEPLOYER_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
_EC2_SERVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": [f"arn:aws:iam::{SANDBOX_ACCOUNT}:role/*"]},
        {"Effect": "Allow", "Action": ["iam:GetInstanceProfile"],
         "Resource": [f"arn:aws:iam::{SANDBOX_ACCOUNT}:instance-profile/*"]},
        # Auto Scaling, as the service (its service-linked role on AWS): replaces and ends the
        # machines of a group (--local's group player, automation/executors/localgroup.py); and
        # EC2 itself, which stops a machine whose OS powers off (automation/sandbox/poweroff.py).
        {"Effect": "Allow", "Action": ["autoscaling:DescribeAutoScalingGroups",
                                       "autoscaling:TerminateInstanceInAutoScalingGroup",
                                       "ec2:TerminateInstances", "ec2:StopInstances", "ec2:DescribeInstances"],
         "Resource": "*"},
    ],
}


def glob_to_regex(pattern: str) -> str:
    """IAM's wildcards: `*` any run of characters, `?` exactly one; everything else literal."""
    return "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"


GROUP_ID = "00000000-0000-4000-8000-000000000000"
_INSTANCE_ACTIONS = {"TerminateInstances", "StopInstances", "StartInstances", "RebootInstances",
                     "ModifyInstanceAttribute"}


# What AWS authorises against "*" (the Service Authorization Reference lists no resource type
# for them): tests/test_sandbox_iam.py checks every call the project makes is here or mapped.
UNSCOPED = {("ec2", "Describe*"), ("ec2", "GetEbsDefaultKmsKeyId"), ("autoscaling", "Describe*"),
            ("sts", "GetCallerIdentity")}


def resource_of(service: str, action: str, params: dict[str, list[str]], region: str, account: str) -> list[str]:
    """The ARNs AWS authorises an action against, for the actions this project calls; "*" for
    the rest (describes are authorised against "*" on AWS too). `params`: the request's
    parameters, each a list of values (a query request's `InstanceId.1`, a JSON request's `Name`)."""
    if service == "ec2" and action in _INSTANCE_ACTIONS:
        ids = [values[0] for key, values in sorted(params.items()) if key.startswith("InstanceId.")]
        return [f"arn:aws:ec2:{region}:{account}:instance/{i}" for i in ids] or ["*"]
    if service == "ec2" and action == "RunInstances":
        return [f"arn:aws:ec2:{region}:{account}:instance/*"]
    if service == "ec2" and action == "CreateTags":
        ids = [values[0] for key, values in sorted(params.items()) if key.startswith("ResourceId.")]
        return [f"arn:aws:ec2:{region}:{account}:{_ec2_kind(i)}/{i}" for i in ids] or ["*"]
    if service == "autoscaling" and "AutoScalingGroupName" in params:
        # The group's id in its ARN is a UUID no request carries; policies match it with `*`.
        name = params["AutoScalingGroupName"][0]
        return [f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:{GROUP_ID}:autoScalingGroupName/{name}"]
    if service == "ec2" and action in ("CreateLaunchTemplate", "DeleteLaunchTemplate"):
        return [f"arn:aws:ec2:{region}:{account}:launch-template/*"]
    if service == "ec2" and action == "DeleteVolume":
        return [f"arn:aws:ec2:{region}:{account}:volume/{v}" for v in params.get("VolumeId", [])] or ["*"]
    if service == "iam" and action == "GetInstanceProfile":
        return [f"arn:aws:iam::{account}:instance-profile/{params['InstanceProfileName'][0]}"]
    if service == "ssm" and action in ("GetParameter", "GetParameters"):
        return [ssm_parameter_arn(n, region, account) for n in params.get("Name", []) + params.get("Names", [])] or ["*"]
    if service == "kms" and params.get("KeyId"):
        return [kms_key_arn(params["KeyId"][0], region, account)]
    if service == "service-quotas" and action == "GetServiceQuota" and params.get("QuotaCode"):
        return [f"arn:aws:servicequotas:{region}:{account}:{params['ServiceCode'][0]}/{params['QuotaCode'][0]}"]
    return ["*"]


def _ec2_kind(resource_id: str) -> str:
    prefix = resource_id.split("-", 1)[0]
    return {"i": "instance", "vol": "volume", "eni": "network-interface", "sir": "spot-instances-request",
            "sg": "security-group", "subnet": "subnet", "vpc": "vpc"}.get(prefix, prefix)


def ssm_parameter_arn(name: str, region: str, account: str) -> str:
    # Public parameters (/aws/service/...) belong to no account: their ARN's account field is empty.
    owner = "" if name.startswith("/aws/") else account
    return f"arn:aws:ssm:{region}:{owner}:parameter/{name.lstrip('/')}"


def kms_key_arn(key_id: str, region: str, account: str) -> str:
    """A KMS key as its ARN (an id or ARN; an alias stays an alias ARN, which a `key/*` grant
    does not match: the worse reading, AWS itself authorises an alias against its key)."""
    if key_id.startswith("arn:"):
        return key_id
    kind = "" if key_id.startswith("alias/") else "key/"
    return f"arn:aws:kms:{region}:{account}:{kind}{key_id}"


def resolve_policy_variables(document: str, session_name: str | None) -> str:
    """`${ec2:InstanceID}` is the instance whose role signed the call: the session's name."""
    if session_name and re.fullmatch(r"i-[0-9a-f]{8,17}", session_name):
        return document.replace("${ec2:InstanceID}", session_name)
    return document


def may_list_bucket(policies: list[dict], bucket_arn: str) -> bool:
    """Whether identity policies allow s3:ListBucket on the bucket to a GET or HEAD of a key. Such
    a request has no list context (no `s3:prefix`, `s3:delimiter`, `s3:max-keys`), so a statement
    applies only when its conditions hold with their keys absent; a Deny that applies wins."""
    allowed = False
    for policy in policies:
        statements = policy.get("Statement", [])
        for statement in [statements] if isinstance(statements, dict) else statements:
            # Action names are case-insensitive in IAM; resource ARNs are not.
            if not (_matches(statement.get("Action", []), "s3:ListBucket", re.IGNORECASE)
                    and _matches(statement.get("Resource", []), bucket_arn)):
                continue
            if not all(_holds_without_key(op, values) for op, values in (statement.get("Condition") or {}).items()):
                continue
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


# IAM: a condition whose key the request lacks is false, except for the negated operators and
# `...IfExists` (true), and `Null` (true when it asks for the key to be absent).
_NEGATED = ("StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals", "DateNotEquals",
            "NotIpAddress", "ArnNotEquals", "ArnNotLike")


def _holds_without_key(operator: str, values: dict) -> bool:
    qualifier, _, operator = operator.rpartition(":")  # ForAnyValue: / ForAllValues:
    if qualifier == "ForAllValues" or operator.endswith("IfExists") or operator in _NEGATED:
        return True
    if operator == "Null":
        return all(str(v).lower() == "true" for value in values.values()
                   for v in ([value] if not isinstance(value, list) else value))
    return False


def _matches(patterns, value: str, flags: int = 0) -> bool:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(re.match(glob_to_regex(p), value, flags=re.DOTALL | flags) for p in patterns)


# -- installed into the moto server process ------------------------------------------------------
class SerializeConditionalRequests:
    """S3 applies a conditional write atomically; moto checks, then writes. One lock restores it."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if not (environ.get("HTTP_IF_MATCH") or environ.get("HTTP_IF_NONE_MATCH")):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]  # the whole write happens inside the lock
            finally:
                getattr(result, "close", lambda: None)()


def install() -> None:
    """Patch moto in this process (the sandbox's server) and turn IAM enforcement on."""
    from moto import settings
    from moto.core.responses import ActionAuthenticatorMixin, BaseResponse
    from moto.iam import access_control
    from moto.moto_api._internal.models import moto_api_backend

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0

    access_control.IAMPolicyStatement._match = staticmethod(
        lambda pattern, string: re.match(glob_to_regex(pattern), string, flags=re.DOTALL))

    original_check_principal = access_control.IAMPolicyStatement._check_principal

    def check_principal(self, principal: str) -> bool:
        expected = self._statement.get("Principal") or {}
        if isinstance(expected, dict) and "AWS" not in expected:
            services = expected.get("Service", [])
            services = [services] if isinstance(services, str) else services
            return "ec2.amazonaws.com" in services and principal == EC2_SERVICE.arn
        return original_check_principal(self, principal)

    access_control.IAMPolicyStatement._check_principal = check_principal

    original_collect = access_control.AssumedRoleAccessKey.collect_policies

    def collect_policies(self):
        docs = []
        for policy in original_collect(self):
            document = json.dumps(access_control.IAMPolicy(policy)._policy_json)
            docs.append(resolve_policy_variables(document, self._session_name))
        return docs

    access_control.AssumedRoleAccessKey.collect_policies = collect_policies

    original_authorize = BaseResponse._authenticate_and_authorize_normal_action

    def authorize(self, resource: str = "*") -> None:
        service = getattr(self, "service_name", "")
        action = self._get_action()
        if resource == "*":
            params = dict(self.querystring)
            if service in ("ssm", "kms", "service-quotas"):  # JSON requests: their parameters are in the body
                params = {name: [v for v in ([value] if isinstance(value, str) else value or []) if v]
                          for name in ("Name", "Names", "KeyId", "ServiceCode", "QuotaCode")
                          if (value := self._get_param(name))}
            resources = resource_of(service, action, params, self.region, self.current_account)
        else:
            resources = [resource]
        for arn in resources:
            original_authorize(self, arn)

    BaseResponse._authenticate_and_authorize_normal_action = authorize
    _refuse_ec2_as_ec2_does()
    _answer_missing_keys_as_s3()
    _answer_ebs_default_kms_key()
    grouplaunches.install()
    refuse_foreign_detach()

    original_reset = type(moto_api_backend).reset

    def reset(self) -> None:
        original_reset(self)
        grouplaunches.set_conditions(grouplaunches.LaunchConditions())
        create_identities()

    type(moto_api_backend).reset = reset
    create_identities()


def _refuse_ec2_as_ec2_does() -> None:
    """EC2 refuses with UnauthorizedOperation (403), not the AccessDenied moto gives every service."""
    from moto.core.exceptions import _RESTError
    from moto.iam.access_control import IAMRequest

    class UnauthorizedOperation(_RESTError):
        code = 403

        def __init__(self, user_arn: str, action: str):
            super().__init__("UnauthorizedOperation", f"You are not authorized to perform this operation. "
                                                      f"User: {user_arn} is not authorized to perform: {action}")

    original = IAMRequest._raise_access_denied

    def raise_access_denied(self) -> None:
        if self._service == "ec2":
            raise UnauthorizedOperation(self._access_key.arn, self._action)
        original(self)

    IAMRequest._raise_access_denied = raise_access_denied


def _answer_missing_keys_as_s3() -> None:
    """A GET or HEAD of a missing key: 404 only to a caller that may list the bucket, else 403."""
    from moto.iam.access_control import IAMPolicy, create_access_key
    from moto.s3.exceptions import BucketAccessDeniedError, MissingKey
    from moto.s3.responses import S3Response

    def refuse_unless_listable(response, bucket: str) -> None:
        authorization = response.headers.get("Authorization") or ""
        key_id = authorization.partition("Credential=")[2].split("/", 1)[0]
        if not key_id:
            return  # unsigned: moto has refused it already
        caller = create_access_key(account_id=response.current_account, partition="aws", access_key_id=key_id,
                                   headers=response.headers)
        policies = [IAMPolicy(p)._policy_json for p in caller.collect_policies()]
        if not may_list_bucket(policies, f"arn:aws:s3:::{bucket}"):
            raise BucketAccessDeniedError(bucket=bucket)

    original_get = S3Response._key_response_get

    def key_get(self, query, key_name):
        try:
            return original_get(self, query, key_name)
        except MissingKey:
            refuse_unless_listable(self, self.bucket_name)
            raise

    original_head = S3Response.head_object

    def head_object(self, bucket_name, query, key_name, headers):
        status, response_headers, body = original_head(self, bucket_name, query, key_name, headers)
        if status == 404 and "x-amz-delete-marker" not in response_headers:
            refuse_unless_listable(self, bucket_name)
        return status, response_headers, body

    S3Response._key_response_get = key_get
    S3Response.head_object = head_object


def _answer_ebs_default_kms_key() -> None:
    """EC2's GetEbsDefaultKmsKeyId, which moto lacks (it has the Modify): `alias/aws/ebs` until
    the account chooses another key, as on AWS."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses import EC2Response

    def get_ebs_default_kms_key_id(self) -> ActionResult:
        return ActionResult({"KmsKeyId": self.ec2_backend.default_kms_key_id or "alias/aws/ebs"})

    EC2Response.get_ebs_default_kms_key_id = get_ebs_default_kms_key_id


def refuse_foreign_detach() -> None:
    """DetachInstances as Auto Scaling answers it: ValidationError for a group it does not have
    or an instance that is not in the group, and nothing changed."""
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.models import AutoScalingBackend

    original_detach = AutoScalingBackend.detach_instances

    def detach_instances(self, group_name: str, instance_ids: list[str], should_decrement: bool):
        group = self.autoscaling_groups.get(group_name)
        if group is None:
            raise ValidationError(f"AutoScalingGroup name not found - AutoScalingGroup '{group_name}' not found")
        members = {state.instance.id for state in group.instance_states}
        for instance_id in instance_ids:
            if instance_id not in members:
                raise ValidationError(f"The instance {instance_id} is not part of Auto Scaling group {group_name}.")
        return original_detach(self, group_name, instance_ids, should_decrement)

    AutoScalingBackend.detach_instances = detach_instances


def create_identities() -> None:
    """The deployer, the EC2 stand-in and the operators, with their fixed keys, in moto's IAM."""
    from moto.iam.models import iam_backends

    iam = iam_backends[SANDBOX_ACCOUNT]["aws"]
    for identity, policy in ((DEPLOYER, _DEPLOYER_POLICY), (EC2_SERVICE, _EC2_SERVICE_POLICY),
                             *((op, None) for op in OPERATORS.values())):
        if identity.user in iam.users:
            continue
        iam.create_user("us-east-1", identity.user)
        key = iam.create_access_key(identity.user)
        iam.access_keys.pop(key.physical_resource_id, None)
        key.access_key_id, key.secret_access_key = identity.access_key_id, identity.secret_access_key
        iam.access_keys[key.physical_resource_id] = key
        if policy is not None:
            iam.put_user_policy(identity.user, "sandbox", json.dumps(policy))
