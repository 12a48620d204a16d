"""The AWS stand-in for --local and the tests: its control (start, seed, stop), the moto server,
and the strict IAM layer that makes moto answer as AWS does."""
