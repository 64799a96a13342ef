"""Prefect flows: the generic pipeline flow, the usage-report flow, and compiling a
task.yaml into a deployment. The ``mloc`` command (``flows.cli``) sits on top.

Kept free of imports so that ``mloc --help`` and ``mloc validate`` start fast.
"""
