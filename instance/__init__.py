"""On-instance side of chronos-train, and the S3 protocol the CLI shares with it.

Importing this package must stay cheap: no torch, chronos, pulumi or click at module level.
"""
