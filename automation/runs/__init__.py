"""A run's life on the dev machine: launch, ending (kill), verify-cleanup, the run check, records,
capacity, doctor."""
