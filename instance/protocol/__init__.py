"""The S3 protocol the CLI and the agent share: layout, the lock and its statuses, the records,
the run config, prices, time, the AWS client factory and EC2 facts. Imports nothing else of the
project."""
