"""The run's lifecycle on the machine: the phases, the lock holder, logs, cleanup and the
machine's own end. Stands on `instance.protocol`, `instance.model` and `instance.boot`.

    python -m instance.agent --env E --bucket B --run-id R ...   (see main.py)
"""
