"""Inference task steps: documents, index, models, tools, agents."""
