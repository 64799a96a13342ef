"""Work pools: one definition per GPU type, rendered into Prefect base job templates, and applied.

The deploy command asks :func:`pool_for_task` where a task goes and :func:`job_variables`
what its deployment sets there; ``mloc pools apply`` calls :func:`apply`.
"""

from work_pools.catalog import pool_named, pools
from work_pools.job_template import base_job_template, job_variables
from work_pools.pool_definition import PoolDefinition
from work_pools.registration import apply
from work_pools.selection import PoolError, cpu_pool, pool_for_task

__all__ = [
    "PoolDefinition",
    "PoolError",
    "apply",
    "base_job_template",
    "cpu_pool",
    "job_variables",
    "pool_for_task",
    "pool_named",
    "pools",
]
