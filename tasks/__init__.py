"""Pipeline steps: one module per step and per taskType, and the registry of task types.

ML libraries (torch, transformers, TRL, PEFT, vLLM, LangChain) are imported inside
function bodies only, so importing this package stays cheap.
"""
