"""The LLM's optimization profiles, named as NIM names them: ``<engine>-<precision>-tp<N>-<throughput|latency>``.

- TensorRT-LLM in a Triton Inference Server wins where one is configured (``NIMRAG_LLM_TRITON_URL``): NIM's own
  fastest path. The ``tp<N>`` profiles are for a Triton beside this service on its GPUs (sized by them);
  ``trtllm-triton-tp1-throughput`` for one elsewhere (its GPUs are its own, or it is ``nimrag triton serve`` on a
  CPU), chosen above every local engine but below a ``tp<N>`` profile that fits here.
- transformers on CUDA next: static KV cache and CUDA graphs, on any GPU torch supports.
- llama.cpp on the CPU (the default): the prebuilt ``xllamacpp`` wheel, continuous batching over parallel slots.
- transformers on the CPU is the slow path, never chosen unless pinned; it exists to run the CUDA engine's code
  where no GPU is found.
"""

from __future__ import annotations

from nimrag.services.common.profiles import Profile

_TRITON = ("NIMRAG_LLM_TRITON_URL",)


def _trtllm(precision: str, tp: int, mode: str, rank: int, min_cc: tuple[int, int] = (8, 0)) -> Profile:
    return Profile(
        id=f"trtllm-{precision}-tp{tp}-{mode}", backend="trtllm", device="cuda", precision=precision,
        max_batch_items=256 if mode == "throughput" else 8, max_batch_tokens=8192, rank=rank + tp,
        min_gpus=tp, tensor_parallel=tp, min_compute_capability=min_cc, requires_env=_TRITON,
        python_modules=("tritonclient", "transformers"),
        description="TensorRT-LLM engine in Triton, called over gRPC")


LLM_PROFILES = [
    *(_trtllm("bf16", tp, "throughput", 300) for tp in (1, 2, 4, 8)),
    *(_trtllm("bf16", tp, "latency", 290) for tp in (1, 2, 4, 8)),
    _trtllm("fp8", 1, "throughput", 310, min_cc=(8, 9)),
    Profile(id="trtllm-triton-tp1-throughput", backend="trtllm", device="triton", precision="any",
            max_batch_items=256, max_batch_tokens=8192, rank=250, requires_env=_TRITON,
            python_modules=("tritonclient", "transformers"),
            description="the TensorRT-LLM model in a Triton elsewhere (or nimrag triton serve), over gRPC"),
    Profile(id="transformers-bf16-tp1-throughput", backend="transformers", device="cuda", precision="bf16",
            max_batch_items=32, max_batch_tokens=8192, rank=200, min_gpus=1, min_compute_capability=(8, 0),
            python_modules=("torch", "transformers"), description="transformers on CUDA, bf16"),
    Profile(id="transformers-fp16-tp1-throughput", backend="transformers", device="cuda", precision="fp16",
            max_batch_items=32, max_batch_tokens=8192, rank=190, min_gpus=1,
            python_modules=("torch", "transformers"), description="transformers on CUDA, fp16 (pre-Ampere GPUs)"),
    Profile(id="llamacpp-gguf-tp1-throughput", backend="llamacpp", device="cpu", precision="gguf",
            max_batch_items=8, max_batch_tokens=512, rank=100, python_modules=("xllamacpp",),
            description="llama.cpp on the CPU: 8 parallel sequences, continuous batching"),
    Profile(id="llamacpp-gguf-tp1-latency", backend="llamacpp", device="cpu", precision="gguf",
            max_batch_items=2, max_batch_tokens=512, rank=90, python_modules=("xllamacpp",),
            description="llama.cpp on the CPU: 2 parallel sequences, each as fast as it gets"),
    Profile(id="transformers-fp32-tp1-latency", backend="transformers", device="cpu", precision="fp32",
            max_batch_items=4, max_batch_tokens=2048, rank=10, python_modules=("torch", "transformers"),
            description="transformers on the CPU (slow; runs the CUDA engine's code without a GPU)"),
]
