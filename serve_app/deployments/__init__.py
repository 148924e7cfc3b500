"""The Ray Serve deployments: the LLM server (each replica holds an engine and serves its API;
with one model it is the HTTP ingress itself), the router ingress (several models), the job
queue (every RunPod job's state), the route picker that Serve's HAProxy asks which LLM replica
takes a request (`route_picker.py`, ROUTING_POLICY), and what they share: runtime LoRA
adapters across replicas (`lora_sync.py`), Serve's view of the replicas (`replicas.py`),
engine processes that die with their replica (`engine_reaper.py`). May import: jobs, engine,
host, routing, http, config, logs.
"""
