"""Dev-machine side of chronos-train: CLI, run stacks, executors, the local sandbox."""
