"""``nimrag triton serve``: nimrag's CPU engines inside a real Triton Inference Server (nvidia-pytriton, the optional
extra ``triton``), behind the tensor interfaces the services' Triton backends speak (deploy/triton/README.md)."""
