"""worker-vllm's OpenAI and RunPod APIs as a multi-replica Ray Serve application on vLLM."""
