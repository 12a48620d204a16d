"""The terminal: click commands (by subject), their error mapping, following a run, rendering."""
