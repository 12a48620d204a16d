"""What a run did: the report page, its plots, runs compared side by side."""
