"""worker-vllm's OpenAI and RunPod APIs as a multi-replica Ray Serve application on vLLM.

The packages are the layers, each importing only those below it (`make lint` checks this with
import-linter, contracts in pyproject.toml):

    app, runpod_worker, __main__   entry points: Serve application, serverless worker, CLI
    tooling       the container's entry point, baking a model in, RunPod's forms, docs generation
    deployments   Serve deployments: LLM server (holds an engine), router ingress, job queue,
                  the route picker HAProxy asks which replica takes a request
    jobs          RunPod jobs: inputs, translation to and from the OpenAI path, running one
    engine        the engine adapter: the only package that imports vLLM
    host          host tuning: priorities, CPU placement, HTTP write coalescing (one hook)
    routing       which replica takes a request: prefix-cache aware, least-loaded, round robin
    http          the HTTP layer: ingress app, the model API's guarantees, error shapes
    config        pure configuration: env schema -> settings -> plan
    logs          this application's log format
"""
