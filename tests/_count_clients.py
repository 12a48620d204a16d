"""Run `chronos-train ARGS...` and write what it built to $CHRONOS_COUNT_OUT (JSON): the botocore
sessions and clients it created, the service models it parsed, and the modules it imported.

Counted by watching calls (sys.setprofile), not by replacing anything: botocore and boto3 run
exactly as they do for a user. Used by tests/test_monitor_light.py.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections import Counter

BOTOCORE = f"{os.sep}botocore{os.sep}"
seen = {"clients": Counter(), "sessions": 0, "models": Counter()}


def watch(frame, event, arg):
    if event != "call":
        return
    code = frame.f_code
    name = code.co_name
    if name not in ("create_client", "__init__", "load_file") or BOTOCORE not in code.co_filename:
        return
    where = code.co_filename.rsplit(os.sep, 1)[-1]
    local = frame.f_locals
    if name == "create_client" and where == "client.py":  # ClientCreator.create_client
        seen["clients"][local.get("service_name")] += 1
    elif name == "__init__" and where == "session.py" and type(local.get("self")).__name__ == "Session":
        seen["sessions"] += 1
    elif name == "load_file" and where == "loaders.py":
        path = str(local.get("file_path", ""))
        if path.endswith(f"{os.sep}service-2"):
            seen["models"][path.split(os.sep)[-3]] += 1


def report() -> None:
    sys.setprofile(None)
    doc = {"clients": dict(seen["clients"]), "sessions": seen["sessions"], "models": dict(seen["models"]),
           "modules": sorted(sys.modules)}
    with open(os.environ["CHRONOS_COUNT_OUT"], "w") as fh:
        json.dump(doc, fh)


if __name__ == "__main__":
    atexit.register(report)
    threading.setprofile(watch)
    sys.setprofile(watch)
    from automation.cli.main import main

    sys.argv = ["chronos-train", *sys.argv[1:]]
    main()
