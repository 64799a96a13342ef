"""storage: one module per provider (local, s3, huggingface) for fetching sources and publishing results.

``base`` holds what the providers share (result types, errors, file hashing), ``retry`` the one
retry policy every provider uses in both directions. ``tasks.download`` and ``tasks.upload`` pick
the provider by the source's or destination's ``type`` and call it.
"""
