"""ONNX export of rnnkit's layers: native LSTM/GRU/RNN nodes from both exporters, run by onnxruntime.

Part of the toolchain matrix of tests/test_toolchain.py (same configurations and helpers).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnkit
from test_toolchain import CONFIGS, HIDDEN, IDS, INPUT, flat, pair

# -- ONNX --------------------------------------------------------------------------------------

onnxruntime = pytest.importorskip("onnxruntime")


def run_onnx(path, feeds):
    session = onnxruntime.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: value.numpy() for name, value in zip(names, feeds)})


class WithLengths(torch.nn.Module):
    """The layer with its initial state and lengths as graph inputs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h0, lengths):
        out, h_n = self.layer(x, h0, lengths=lengths)
        return out, h_n


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("name, cls, kwargs", CONFIGS[:3], ids=IDS[:3])
def test_onnx_export_is_native_and_matches_at_a_new_batch_and_length(name, cls, kwargs, dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    fast, _ = pair(cls, kwargs, dtype=torch.float32)
    fast.eval()
    x = torch.randn(6, 3, INPUT)
    path = tmp_path / "layer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and tracer notices
        if dynamo:
            torch.onnx.export(fast, (x,), path, dynamo=True, dynamic_shapes={"input": {0: torch.export.Dim("time"), 1: torch.export.Dim("batch")}},
                              custom_translation_table=rnnkit.onnx_translation_table())  # fmt: skip
        else:
            torch.onnx.export(fast, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "time", 1: "batch"}})
    nodes = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}[cls.__name__] in nodes
    assert "Loop" not in nodes and "Scan" not in nodes
    x2 = torch.randn(11, 5, INPUT)
    outputs = run_onnx(path, [x2])
    with torch.no_grad():
        for got, expected in zip(outputs, flat(*fast(x2)), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)


def test_onnx_takes_lengths_and_initial_state_as_graph_inputs(tmp_path):
    fast, _ = pair(rnnkit.GRU, {"bidirectional": True, "num_layers": 2}, dtype=torch.float32)
    model = WithLengths(fast.eval())
    x, h0, lengths = torch.randn(6, 3, INPUT), torch.randn(4, 3, HIDDEN), torch.tensor([6, 2, 4])
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, h0, lengths), path, dynamo=False, input_names=["x", "h0", "lengths"],
                          dynamic_axes={"x": {0: "time", 1: "batch"}, "h0": {1: "batch"}, "lengths": {0: "batch"}})  # fmt: skip
    x2, h2, lengths2 = torch.randn(9, 4, INPUT), torch.randn(4, 4, HIDDEN), torch.tensor([9, 1, 5, 7])
    outputs = run_onnx(path, [x2, h2, lengths2])
    with torch.no_grad():
        for got, expected in zip(outputs, model(x2, h2, lengths2), strict=True):
            torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("kwargs, message", [({"proj_size": 2}, "proj_size has no native ONNX node"), ({"layer_norm": True}, "LayerNorm"),
                                             ({"zoneout": 0.2}, "zoneout has no native ONNX node")])
def test_onnx_refuses_what_has_no_native_node(kwargs, message, dynamo, tmp_path):
    layer = rnnkit.LSTM(INPUT, HIDDEN, **kwargs).eval()
    options = {"custom_translation_table": rnnkit.onnx_translation_table()} if dynamo else {}
    with pytest.raises(Exception, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(4, 2, INPUT),), tmp_path / "x.onnx", dynamo=dynamo, **options)
