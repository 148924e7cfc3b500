"""Configuration: the environment-variable schema (configs/env_vars.yaml) -> validated settings
-> the plan of what gets deployed (pydantic models handed to every deployment).

Pure: it reads the environment and the schema and decides; it starts nothing and imports no
engine, deployment or HTTP code. vLLM's own argument parser, which types and checks the engine
arguments, is given to `plan.build_plan` by its callers (`engine_args`). May import: logs.
"""
