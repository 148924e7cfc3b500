"""RunPod's job API: worker-vllm's job inputs and outputs, and the job queue."""
