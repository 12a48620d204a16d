"""Pulumi programs: the persistent stack and the per-run EC2 stack.

These modules import pulumi at module level; import them only where a Pulumi program runs
(`__main__.py`, the EC2 executor's methods), never from the CLI's reading commands.
"""
