"""RunPod jobs: worker-vllm's job input (`inputs.py`), its translation to an OpenAI request and
the answer back into worker-vllm's outputs (`translate.py`), running one on a replica through
the model API (`runner.py`), the first-come line of jobs waiting for a replica
(`waiting_line.py`) and RunPod's job API routes (`routes.py`). The job queue that holds every
job's state is a deployment (deployments/job_queue.py). May import: http, config, logs.
"""
