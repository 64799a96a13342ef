"""work_pools"""
