"""Serving a model as an OpenAI-compatible endpoint (`kind: ServingTask`).

- `plan.py`: what one service serves and where its files lie, as the server sees them;
- `vllm.py`, `transformers_serve.py`: one module per engine, each the server's command line.
"""
