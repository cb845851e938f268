"""The int8 export step on a real (tiny) ONNX graph: quantized in place of the fp32 file, without ONNX Runtime's
pre-processing advice reaching the logs (it reached `nimrag up`'s console)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from nimrag.services.common.onnx_models import quantize_int8


def ffn_graph(path) -> None:
    """x @ W with W an initializer, the MatMul named as a BERT feed-forward up-projection."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32), "W")
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="/encoder/layer.0/intermediate/dense/MatMul")
    graph = helper.make_graph([node], "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_int8_quantization_is_quiet_and_gives_a_working_model(tmp_path, caplog):
    ffn_graph(tmp_path / "fp32.onnx")
    with caplog.at_level(logging.INFO):
        quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    # the filter is gone again: the root logger's other warnings still get through
    assert not [f for f in logging.getLogger().filters if type(f).__name__ == "_NoPreprocessingAdvice"]
    quantized = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in quantized.graph.node)
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ones((2, 16), dtype=np.float32)})
    assert out.shape == (2, 32)
