"""Entry of the persistent stack (`pulumi up`): read the stack config, build the infrastructure."""
import pulumi

from automation.stacks.persistent import build_persistent_stack
from automation.stacks.persistent_config import StackConfigError, config_from_pulumi

try:
    outputs = build_persistent_stack(config_from_pulumi())
except StackConfigError as exc:
    # RunError ends the program with this one sentence instead of a Python traceback.
    raise pulumi.RunError(str(exc)) from None

for key, value in outputs.items():
    pulumi.export(key, value)
