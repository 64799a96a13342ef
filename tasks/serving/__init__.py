"""Serving a model as an OpenAI-compatible endpoint (`kind: ServingTask`).

- `plan.py`: what one service serves and where its files lie, as the server sees them;
- `vllm.py`, `transformers_serve.py`: one module per engine, each the server's command line;
- `prepare.py`: the model and adapters fetched into the cache and linked where the server reads them;
- `goals.py`: converging as an ordered list of goals, each checked, and ensured when it is not achieved;
- `status.py`: the service's phase and reason, and the endpoint probes every backend uses;
- `local.py`: the local backend: its goals, a detached server process, its status and delete;
- `kubernetes.py`: the cluster side: apply only what differs, observe the pods, classify them;
- `endpoint.py`: where a service answers, for an InferenceTask that names it as its model.
"""
