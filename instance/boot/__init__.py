"""The machine's first boot: the user data and the cached Python environment. Runs before any
venv exists, so it imports `instance.protocol` only and nothing outside the standard library
at module level."""
