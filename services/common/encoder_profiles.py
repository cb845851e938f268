"""Optimization profiles of the transformer-encoder services (embed, rerank), ranked by measured speed as a
service (bench/embed.py).

The service mostly runs small batches (a round of concurrent requests, cut where padding would waste work), and
there ONNX Runtime is several times faster than PyTorch on CPU: PyTorch's small-matrix GEMMs dominate its time
(profiled: addmm ~80% at batch 1). PyTorch bf16 wins only on large sorted batches, so it ranks below ONNX fp32.
Measured on a 2-core AMD EPYC (AVX512-VNNI/BF16), 32 clients over HTTP, texts/s: onnx-cpu-int8 247,
onnx-cpu-fp32 181, torch-cpu-fp32 141, torch-cpu-bf16 126.

Each service adds :func:`triton_profile`: its model in a Triton Inference Server (a TensorRT or ONNX model on a
GPU host, or ``nimrag triton serve``), chosen above every local one once the service's Triton URL is set.
"""

from __future__ import annotations

from nimrag.services.common.profiles import Profile

_CPU_BATCH = {"max_batch_items": 64, "max_batch_tokens": 8192}
# On a CPU a batch costs about its (padded) tokens, so nothing is gained by waiting for more and padding is cut
# hard; on a GPU a bigger batch is nearly free, so a short wait for more requests pays and padding matters less.
_GPU_BATCH = {"max_batch_items": 512, "max_batch_tokens": 131072, "batch_wait_ms": 2.0, "max_padding_ratio": 3.0}

ENCODER_PROFILES: list[Profile] = [
    Profile("torch-cuda-bf16", "torch", "cuda", "bf16", rank=100, min_gpus=1, min_gpu_memory_gib=2,
            min_compute_capability=(8, 0), python_modules=("torch",),
            description="PyTorch on one GPU in bf16 (Ampere and newer)", **_GPU_BATCH),
    Profile("torch-cuda-fp16", "torch", "cuda", "fp16", rank=90, min_gpus=1, min_gpu_memory_gib=2,
            min_compute_capability=(7, 0), python_modules=("torch",),
            description="PyTorch on one GPU in fp16 (Volta and newer)", **_GPU_BATCH),
    Profile("onnx-cpu-int8", "onnxruntime", "cpu", "int8", rank=60,
            cpu_isa_any=("avx512_vnni", "avx_vnni", "amx_int8"), python_modules=("onnxruntime", "onnx"),
            description="ONNX Runtime, int8 weights (dynamic quantization) on CPUs with VNNI", **_CPU_BATCH),
    Profile("onnx-cpu-fp32", "onnxruntime", "cpu", "fp32", rank=50, python_modules=("onnxruntime", "onnx"),
            description="ONNX Runtime fp32 on any CPU", **_CPU_BATCH),
    Profile("torch-cpu-bf16", "torch", "cpu", "bf16", rank=30, cpu_isa_any=("avx512_bf16", "amx_bf16"),
            python_modules=("torch",), description="PyTorch bf16 autocast on CPUs with bf16 units",
            **_CPU_BATCH),
    Profile("torch-cpu-fp32", "torch", "cpu", "fp32", rank=10, python_modules=("torch",),
            description="PyTorch fp32 on any CPU: the numerical reference", **_CPU_BATCH),
]


def triton_profile(url_env: str) -> Profile:
    """The model in Triton, at ``url_env``'s address: no local hardware needed, as the engine is Triton's. The
    batches this service sends are cut to the Triton model's ``max_batch_size`` and sent together; padding is cut
    as on a CPU, since Triton may be running on one (``nimrag triton serve``)."""
    return Profile("tensorrt-triton", "triton", "triton", "any", rank=110, requires_env=(url_env,),
                   python_modules=("tritonclient",), max_batch_items=256, max_batch_tokens=32768,
                   description=f"the model in Triton Inference Server at {url_env}, over gRPC (TensorRT, ONNX, "
                               "or nimrag triton serve)")
