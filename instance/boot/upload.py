"""One file to S3 for environment.sh, by the environment's own Python once it is built:

    venv/bin/python -m instance.boot.upload FILE BUCKET KEY

The environment tarball (gigabytes for the CUDA stack) is saved on the machine whose build
missed the cache, on billed GPU time, so it goes through the agent's transfer path (parallel
multipart parts: 2.8x `aws s3 cp` under the model of S3 in docs/benchmarks.md) as the instance
role (boto3's chain), not through the AWS CLI. Exit 0 once the object is whole in S3; else one
line on stderr and exit 1, and environment.sh falls back to the CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m instance.boot.upload FILE BUCKET KEY", file=sys.stderr)
        return 2
    path, bucket, key = Path(argv[0]), argv[1], argv[2]
    from ..protocol.aws import client
    from ..protocol.transfer import TransferFailed, Upload, upload_files

    try:
        upload_files(client("s3"), bucket, [Upload(path, key)])
    except TransferFailed as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
