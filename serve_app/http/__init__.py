"""The HTTP layer: what every route answers besides the engine's own answer.

`app.py` builds an ingress replica's FastAPI app (API key, body limit, RunPod's OpenAI base
URLs, /health, routers such as RunPod's job API); `model_api.py` puts an engine's routes behind
generation slots (`admission.py`), the protocols' error shapes (`errors.py`: OpenAI's,
Anthropic's, RunPod's) and OpenAI's published schemas (`conformance.py`); `asgi.py` runs one
request through an app in-process and streams its answer back, as a deployment handle carries
it. May import: config, logs; never an engine (it sees an ASGI app).
"""
