"""The pool definitions: one module per pool, each defining ``POOL``, named for the pool ('-' as '_').

Adding a GPU type's pool is adding one module here; ``work_pools.catalog`` finds it.
"""
