"""Prefect blocks MLOC reads credentials and storage settings from.

A task.yaml names a block (``credentials_block: <name>``); the secret itself lives in
the block (or the worker's environment) and never travels with the task.
"""
