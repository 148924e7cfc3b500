"""Deployment tooling: the Docker image's entry point (`container.py`, RUN_MODE), baking a model
into the image (`bake.py`), RunPod's worker-config.json and .runpod/hub.json from the schema
(`runpod_config.py`), and the README's variable reference (`docs.py`). Not imported while
serving. May import any package below the entry points.
"""
