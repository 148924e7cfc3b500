"""Routing: which LLM replica takes a request (ROUTING_POLICY).

`policy.py` decides, in pure code: an approximate prefix index per replica (what each has been
sent, bounded and aged as its KV cache would be) weighed against each replica's load, explicit
affinity (`prompt_cache_key`, `user`, a session header), least-loaded and round-robin.
`serve_router.py` is that decision as a Ray Serve `RequestRouter`, used by every caller of an
LLM deployment: the router ingress and the job queue through their handles, and the ingress
request router that Serve's HAProxy asks before it sends a one-model HTTP request straight to
a replica (the stream never passes the router: one small hop per request).

May import: config, logs, the standard library and Ray Serve (not vLLM, not the HTTP layer).
"""
