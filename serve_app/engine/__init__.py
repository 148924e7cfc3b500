"""The engine adapter: the only package of this application that imports vLLM.

It starts one vLLM engine as `vllm serve` does, from the same arguments, and hands the rest of
the application an `Engine` (protocol.py, no vLLM import): vLLM's own HTTP API for that engine
as an ASGI app (every router `vllm serve` registers for the model's tasks), its health and its
load. Beside it: vLLM's argument parser, which the configuration layer types settings with
(args.py, given to config.plan.build_plan by the entry points); the model's files, downloaded
into BASE_PATH (model_files.py); vLLM's metrics copied into Ray's (metrics.py); the tool-call
parser chosen when none is set (tool_parsers.py); and the check that the installed vLLM has
every API all this relies on (compat.py), which fails at start-up with a message naming what
is missing.

May import: vLLM, huggingface_hub, and http, config, logs. Other packages import
`serve_app.engine.protocol`, or start an engine with `serve_app.engine.vllm_engine.start`;
none imports vLLM.
"""
