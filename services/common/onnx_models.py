"""Transformer encoders exported to ONNX once and cached, shared by the embedding and reranking engines.

Exports are made with torch from the model folder and cached under the model cache (``NIM_CACHE_PATH``), keyed by
the folder's weights and this recipe's version, and written atomically (temporary file, then rename) so a killed
process never leaves a half-written model behind. int8 is ONNX Runtime's dynamic quantization (per-channel int8
weights, VNNI kernels) of the feed-forward up-projections only. Dynamic quantization scales activations per
tensor, across the whole batch, so its error grows for short texts and depends on what a text is batched with;
measured on MiniLM against the fp32 reference (tests/services/embed/test_engines.py texts, each alone and all in
one batch), min cosine: every MatMul 0.983, all but the FFN outputs 0.987, all but the FFN outputs and the first
layer 0.988, up-projections only 0.993 (at about 1.2x the fp32 speed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from nimrag.services.common.errors import StartupError

EXPORT_VERSION = "3"  # bump when the export or quantization recipe changes, so caches are rebuilt
_FFN_UP_PROJECTION = re.compile(r"(intermediate/dense|mlp/(fc1|up_proj|gate_proj))/MatMul$")
log = logging.getLogger("nimrag.onnx")


def cache_key(model_dir: Path) -> str:
    h = hashlib.sha256(EXPORT_VERSION.encode())
    for f in sorted(model_dir.glob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _atomic_target(final: Path) -> Path:
    """A temporary path beside ``final``; the caller renames it into place when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.name + ".", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def export_fp32(model_dir: Path, input_names: tuple[str, ...], head: str, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    loader = AutoModel if head == "last_hidden_state" else AutoModelForSequenceClassification
    hf = loader.from_pretrained(str(model_dir), local_files_only=True).eval()

    class Head(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return getattr(self.inner(**dict(zip(input_names, tensors))), head)

    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names} | {head: {0: "batch"}}
    tmp = _atomic_target(target)
    try:
        with torch.inference_mode():
            torch.onnx.export(Head(hf), dummy, str(tmp), input_names=list(input_names), output_names=[head],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _NoPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises pre-processing (shape inference, for static quantization) on every call, as
    a WARNING on the root logger, so it reached `nimrag up`'s console; the dynamic quantization of named MatMuls
    here does not need it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    chosen = [n.name for n in graph.node if n.op_type == "MatMul" and _FFN_UP_PROJECTION.search(n.name)]
    if not chosen:
        raise StartupError("the int8 profile does not recognise this architecture's feed-forward layers; "
                           "pin an fp32 profile instead")
    tmp = _atomic_target(target)
    advice = _NoPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=chosen,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp, target)
    finally:
        logging.getLogger().removeFilter(advice)
        tmp.unlink(missing_ok=True)


def prepare_onnx(model_dir: Path, name: str, input_names: tuple[str, ...], head: str, precision: str,
                 cache_dir: Path) -> Path:
    """The cached ONNX file for this model, head and precision, exporting (and quantizing) it first if needed."""
    folder = cache_dir / "onnx" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{head}-{cache_key(model_dir)}"
    fp32 = folder / "model-fp32.onnx"
    if not fp32.is_file():
        log.info("exporting the model to ONNX", extra={"target": str(fp32)})
        export_fp32(model_dir, input_names, head, fp32)
    if precision == "fp32":
        return fp32
    int8 = folder / "model-int8.onnx"
    if not int8.is_file():
        log.info("quantizing the ONNX model to int8", extra={"target": str(int8)})
        quantize_int8(fp32, int8)
    return int8


def cpu_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
