"""Data, base model, training and evaluation: what turns a dataset into a scored model.
Imports `instance.protocol` only."""
