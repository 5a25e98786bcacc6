"""Experiment configs (ml_collections): `get_config(arg)` in each module; import nothing but ml_collections."""
