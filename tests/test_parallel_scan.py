"""minGRU, minLSTM and RG-LRU: the parallel scan equals the step loop, through every path and transform.

The reference engine (one step at a time, the cells' own math) defines the results. The
default engine is the compiled scan (C++ ops ``scan_coefficients`` and ``linear_scan``); the
plain-PyTorch chunked scan is its fallback. Both are held to the reference in float64 to 1e-10
and in float32 to 1e-5: outputs, final states and every gradient, with a non-zero h0,
variable lengths and both directions.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import rnnkit
from helpers import assert_close
from rnnkit.cells import minimal
from rnnkit.engine import scan
from test_toolchain import GraphRecorder

FAMILIES = [rnnkit.MinGRU, rnnkit.MinLSTM, rnnkit.RGLRU]
IDS = ["mingru", "minlstm", "rglru"]
INPUT, HIDDEN = 3, 5
LENGTHS = [7, 3, 5, 1]


def native_or_skip():
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    return rnnkit.ops.native_loops()


def pair(cls, dtype=torch.float64, **kwargs):
    fast = cls(INPUT, HIDDEN, dtype=dtype, **kwargs)
    reference = cls(INPUT, HIDDEN, dtype=dtype, engine="reference", **kwargs)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def run_and_grads(layer, x, h0, lengths, generator_seed=0):
    """Outputs, final state and every gradient (input, h0, parameters) of a random weighted loss."""
    layer.zero_grad()
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out, h_n = layer(x, h0, lengths=lengths)
    g = torch.Generator().manual_seed(generator_seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (h_n * torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)).sum()
    loss.backward()
    return [out, h_n, x.grad, h0.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", ["compiled", "plain-pytorch"])
@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_scan_equals_step_loop_outputs_states_and_every_gradient(cls, path, dtype, monkeypatch):
    if path == "compiled":
        native_or_skip()
    else:
        monkeypatch.setattr(scan, "_native", lambda t: None)
    torch.manual_seed(0)
    fast, reference = pair(cls, dtype, num_layers=2, bidirectional=True)
    x = torch.randn(max(LENGTHS), len(LENGTHS), INPUT, dtype=dtype)
    h0 = torch.randn(4, len(LENGTHS), HIDDEN, dtype=dtype)
    for lengths in (LENGTHS, None):
        got, expected = run_and_grads(fast, x, h0, lengths), run_and_grads(reference, x, h0, lengths)
        names = ["output", "h_n", "grad x", "grad h0", *(f"grad {n}" for n, _ in fast.named_parameters())]
        for name, g, e in zip(names, got, expected, strict=True):
            assert_close(g, e, dtype, f"{cls.__name__} {path} lengths={lengths}: {name}")


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_streaming_in_chunks_equals_one_call(cls):
    """h_n fed back as h0 continues the sequence exactly: the state is never transformed again (minGRU's g applies to candidates only)."""
    torch.manual_seed(1)
    layer = cls(INPUT, HIDDEN, dtype=torch.float64, num_layers=2)
    x = torch.randn(10, 2, INPUT, dtype=torch.float64)
    h0 = torch.randn(2, 2, HIDDEN, dtype=torch.float64)
    whole, h_whole = layer(x, h0)
    parts, h = [], h0
    for chunk in x.split([3, 1, 4, 2]):
        out, h = layer(chunk, h)
        parts.append(out)
    assert_close(torch.cat(parts), whole, torch.float64, "streamed output")
    assert_close(h, h_whole, torch.float64, "streamed h_n")


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_gradcheck_and_gradgradcheck(cls):
    torch.manual_seed(2)
    layer = cls(INPUT, HIDDEN, dtype=torch.float64, bidirectional=True)
    x = torch.randn(5, 3, INPUT, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, HIDDEN, dtype=torch.float64, requires_grad=True)
    lengths = [5, 2, 4]
    params = dict(layer.named_parameters())

    def run(x, h0, *weights):
        out, h_n = torch.func.functional_call(layer, dict(zip(params, weights)), (x, h0), {"lengths": lengths})
        return out, h_n

    inputs = (x, h0, *(p.detach().clone().requires_grad_() for p in params.values()))
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_torch_func_transforms_give_the_reference_results(cls):
    torch.manual_seed(3)
    fast, reference = pair(cls)
    x = torch.randn(4, 2, INPUT, dtype=torch.float64)
    params = {n: p.detach() for n, p in fast.named_parameters()}

    def loss(layer):
        return lambda p, x: torch.func.functional_call(layer, p, (x,))[0].pow(2).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forward AD loads its decompositions through torch.jit.script
        for transform in (torch.func.grad, torch.func.jacrev, torch.func.jacfwd):
            got, expected = transform(loss(fast))(params, x), transform(loss(reference))(params, x)
            for name in params:
                assert_close(got[name], expected[name], torch.float64, f"{transform.__name__} {name}")
    per_sample = torch.func.vmap(lambda xi: torch.func.functional_call(fast, params, (xi,))[0], in_dims=1)(x)
    assert_close(per_sample, torch.stack([reference(x[:, i])[0] for i in range(2)]), torch.float64, "vmap over the batch")
    vmapped_grad = torch.func.vmap(torch.func.grad(lambda xi: loss(fast)(params, xi.unsqueeze(1))), in_dims=1)(x)
    expected_grad = torch.stack([torch.func.grad(lambda xi: loss(reference)(params, xi.unsqueeze(1)))(x[:, i]) for i in range(2)])
    assert_close(vmapped_grad, expected_grad, torch.float64, "vmap of grad")


def test_linear_scan_kernel_time_chunked_and_backward_equal_the_loop():
    """The kernel's two work splits (feature slices; time chunks for narrow features) and its backward, at odd lengths."""
    native = native_or_skip()
    torch.manual_seed(4)
    for steps, features, chunks in ((1, 4, 0), (13, 3, 0), (13, 3, 5), (40, 300, 0), (40, 300, 7)):
        for reverse in (False, True):
            a = torch.rand(steps, features, dtype=torch.float64, requires_grad=True)
            b = torch.randn(steps, features, dtype=torch.float64, requires_grad=True)
            h0 = torch.randn(features, dtype=torch.float64, requires_grad=True)
            state, loop = h0, [None] * steps
            for t in range(steps - 1, -1, -1) if reverse else range(steps):
                state = a[t] * state + b[t]
                loop[t] = state
            loop = torch.stack(loop)
            grad = torch.randn_like(loop)
            loop.backward(grad)
            with torch.no_grad():
                h = native.linear_scan(a, b, h0, reverse, chunks)
                grads = native.linear_scan_backward(a, h, h0, grad, reverse, chunks)
            what = f"T={steps} F={features} chunks={chunks} reverse={reverse}"
            assert_close(h, loop.detach(), torch.float64, what)
            for name, got, expected in zip(("a", "b", "h0"), grads, (a.grad, b.grad, h0.grad), strict=True):
                assert_close(got, expected, torch.float64, f"{what}: grad {name}")


def test_plain_pytorch_chunked_scan_any_length_and_chunk_size():
    torch.manual_seed(5)
    for steps, chunk in ((1, None), (10, None), (10, 3), (17, 17), (17, 1)):
        a, b, h0 = torch.rand(steps, 2, 3, dtype=torch.float64), torch.randn(steps, 2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        state, loop = h0, []
        for t in range(steps):
            state = a[t] * state + b[t]
            loop.append(state)
        assert_close(scan.chunked_scan(a, b, h0, chunk_size=chunk), torch.stack(loop), torch.float64, f"T={steps} C={chunk}")
    with pytest.raises(ValueError, match="chunk_size: expected a positive int, got 0"):
        scan.chunked_scan(a, b, h0, chunk_size=0)


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_coefficient_kernel_equals_the_cells_math_with_gradients(cls):
    native = native_or_skip()
    torch.manual_seed(6)
    kind = rnnkit.ops.kinds.SCAN_KINDS[cls.spec_of_family.name]
    gates = cls.spec_of_family.gates
    projected = (3 * torch.randn(50, gates * HIDDEN, dtype=torch.float64)).requires_grad_()  # both sides of g's kink
    decay = torch.randn(HIDDEN, dtype=torch.float64, requires_grad=True) if cls is rnnkit.RGLRU else None
    inputs = (projected,) if decay is None else (projected, decay)
    expected = scan._reference_coefficients(kind)(projected, decay)
    grads = [torch.randn_like(expected[0]), torch.randn_like(expected[1])]
    expected_grads = torch.autograd.grad(expected, inputs, grads)
    with torch.no_grad():
        got = native.scan_coefficients(kind, projected, decay)
        d_projected, d_decay = native.scan_coefficients_backward(kind, projected, decay, *grads)
    for name, g, e in zip(("a", "b"), got, expected, strict=True):
        assert_close(g, e, torch.float64, name)
    assert_close(d_projected, expected_grads[0], torch.float64, "grad P")
    if decay is not None:
        assert_close(d_decay, expected_grads[1], torch.float64, "grad decay_logit")
    else:
        assert d_decay.numel() == 0


def test_ops_pass_opcheck_and_refuse_autograd_recording():
    native_or_skip()
    torch.manual_seed(7)
    a, b, h0 = torch.rand(6, 4), torch.randn(6, 4), torch.randn(4)
    torch.library.opcheck(torch.ops.rnnkit_fused.linear_scan.default, (a, b, h0, True, 0))
    h = torch.ops.rnnkit_fused.linear_scan(a, b, h0, False, 0)
    torch.library.opcheck(torch.ops.rnnkit_fused.linear_scan_backward.default, (a, h, h0, torch.randn(6, 4), False, 0))
    projected, decay = torch.randn(6, 3 * 4), torch.randn(4)
    for kind in (0, 1, 2):
        p = projected[:, : 8] if kind == 0 else projected
        torch.library.opcheck(torch.ops.rnnkit_fused.scan_coefficients.default, (kind, p, decay))
        torch.library.opcheck(torch.ops.rnnkit_fused.scan_coefficients_backward.default, (kind, p, decay, torch.randn(6, 4), torch.randn(6, 4)))
    with pytest.raises(RuntimeError, match="rnnkit_fused::linear_scan has no autograd formula"):
        torch.ops.rnnkit_fused.linear_scan(a.requires_grad_(), b, h0, False, 0)
    with pytest.raises(RuntimeError, match=r"linear_scan: expected h0 of shape \(F,\) = \(4,\), got \[3\]"):
        torch.ops.rnnkit_fused.linear_scan(a.detach(), b, h0[:3], False, 0)
    with pytest.raises(RuntimeError, match="scan_coefficients: expected kind 0 .mingru., 1 .minlstm. or 2 .rglru., got 5"):
        torch.ops.rnnkit_fused.scan_coefficients(5, projected, None)
    with pytest.raises(RuntimeError, match=r"RG-LRU expects decay_logit of shape \(4,\)"):
        torch.ops.rnnkit_fused.scan_coefficients(2, projected, None)


def test_the_kernels_build_where_a_compiler_exists():
    """Every csrc/*.cpp compiles: a broken kernel file must fail here, not fall back quietly to plain PyTorch."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert rnnkit.ops.load(), rnnkit.ops.status()


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_compile_fullgraph_dynamic_one_graph_for_every_length(cls):
    native_or_skip()
    torch._dynamo.reset()
    torch.manual_seed(8)
    fast, _ = pair(cls, torch.float32, bidirectional=True)
    recorder = GraphRecorder()
    compiled = torch.compile(fast, fullgraph=True, dynamic=True, backend=recorder.backend)
    for length, batch in ((6, 7), (9, 11)):
        x = torch.randn(length, batch, INPUT)
        lengths = torch.tensor([length] + [1 + 3 * i % length for i in range(batch - 1)])
        results = []
        for layer in (compiled, fast):
            fast.zero_grad()
            xi = x.clone().requires_grad_()
            out, h_n = layer(xi, lengths=lengths)
            (out.pow(2).sum() + h_n.pow(2).sum()).backward()
            results.append([out, h_n, xi.grad, *(p.grad.clone() for p in fast.parameters())])
        for got, expected in zip(*results, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert len(recorder.forward) == 1 and len(recorder.backward) == 1, "recompiled for a new batch size or length"
    graph_ops = {str(n.target) for gm in (recorder.forward[0], recorder.backward[0]) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"rnnkit_fused.linear_scan.default", "rnnkit_fused.linear_scan_backward.default"} <= graph_ops, sorted(graph_ops)


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_export_and_trace_record_one_op_per_direction(cls, tmp_path):
    native_or_skip()
    torch.manual_seed(9)
    layer = cls(INPUT, HIDDEN, num_layers=2).eval()
    x = torch.randn(6, 3, INPUT)
    program = torch.export.export(layer, (x,), dynamic_shapes={"input": {0: torch.export.Dim("time"), 1: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "layer.pt2")
    loaded = torch.export.load(tmp_path / "layer.pt2").module()
    x2 = torch.randn(11, 5, INPUT)
    with torch.no_grad():
        for got, expected in zip(loaded(x2), layer(x2), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace is deprecated, and still used
        traced = torch.jit.trace(layer.train(), (x,))
    assert sum(node.kind() == "rnnkit::linear_recurrence" for node in traced.graph.nodes()) == 2
    traced(x2)[0].pow(2).sum().backward()  # the traced op trains: its kernel is the differentiable scan
    traced_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(x2)[0].pow(2).sum().backward()
    for got, expected in zip(traced_grads, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_layer_api_of_gru_batch_first_unbatched_and_cells(cls):
    torch.manual_seed(10)
    layer = cls(INPUT, HIDDEN, num_layers=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 6, INPUT, dtype=torch.float64)
    out, h_n = layer(x)
    assert out.shape == (2, 6, HIDDEN) and h_n.shape == (2, 2, HIDDEN)
    single, h_single = layer(x[0])  # unbatched: (L, H_in)
    assert_close(single, out[0], torch.float64, "unbatched output")
    assert_close(h_single, h_n[:, 0], torch.float64, "unbatched h_n")
    assert not any(name.startswith(("weight_hh", "bias_hh")) for name, _ in layer.named_parameters())
    cell = getattr(rnnkit, cls.__name__ + "Cell")(INPUT, HIDDEN, dtype=torch.float64)
    one = cls(INPUT, HIDDEN, dtype=torch.float64)
    one.load_state_dict({name + "_l0": p for name, p in cell.state_dict().items()})
    h = torch.randn(3, HIDDEN, dtype=torch.float64)
    x_t = torch.randn(3, INPUT, dtype=torch.float64)
    assert_close(cell(x_t, h), one(x_t.unsqueeze(0), h.unsqueeze(0))[0][0], torch.float64, "cell step vs layer")


def test_rglru_decay_initialised_as_the_paper_says():
    layer = rnnkit.RGLRU(INPUT, 4096)
    a_c = torch.sigmoid(layer.decay_logit_l0.double()).pow(minimal.RG_LRU_C)
    assert 0.9 - 1e-6 <= a_c.min() and a_c.max() <= 0.999 + 1e-6
    assert abs(a_c.mean().item() - (0.9 + 0.999) / 2) < 0.005  # uniform over [0.9, 0.999]


def test_the_layers_refuse_what_they_do_not_have():
    with pytest.raises(ValueError, match="proj_size: expected no value: projections are LSTM-only, not supported by MinGRU"):
        rnnkit.MinGRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="layer_norm: expected False: RGLRU has no LayerNorm variant"):
        rnnkit.RGLRU(3, 4, layer_norm=True)
    layer = rnnkit.MinLSTM(3, 4)
    with pytest.raises(ValueError, match="input"):
        layer(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="engine scan: expected a linear-recurrence family"):
        scan.run_direction(rnnkit.GRU(3, 4).spec, torch.randn(2, 1, 3), (torch.zeros(1, 4),), None, None, False)


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "rglru"])
def test_every_model_takes_the_families_by_config_name(cell):
    from rnnkit import models

    config = models.ManyToOneConfig(models.InputConfig(vocab_size=10, embedding_dim=4), 2,
                                    models.RecurrentConfig(cell=cell, hidden_size=6, num_layers=2, bidirectional=True))  # fmt: skip
    model = models.SequenceClassifier(config)
    layers = [m for m in model.modules() if isinstance(m, rnnkit.RecurrentLayer)]
    assert [type(m) for m in layers] == [dict(zip(IDS, FAMILIES))[cell]]
    tokens, lengths = torch.randint(1, 10, (3, 7)), torch.tensor([7, 2, 5])
    probabilities = model.predict_proba((tokens, lengths))
    assert probabilities.shape == (3, 2) and torch.allclose(probabilities.sum(-1), torch.ones(3))


def test_selective_copy_task_places_colours_in_order_among_noise():
    from rnnkit.data.synthetic import selective_copy_task

    inputs, targets = selective_copy_task(50, 12, num_tokens=3, num_colors=5, seed=1)
    assert inputs.shape == targets.shape == (50, 15)
    region, markers = inputs[:, :12], inputs[:, 12:]
    assert (markers == 6).all() and (targets[:, :12] == -100).all()
    for row, answer in zip(region, targets[:, 12:]):
        colours = row[row != 0]
        assert colours.tolist() == answer.tolist() and ((1 <= answer) & (answer <= 5)).all()
    again, _ = selective_copy_task(50, 12, num_tokens=3, num_colors=5, seed=1)
    assert torch.equal(inputs, again)
    with pytest.raises(ValueError, match=r"region_len: expected an int >= num_tokens \(3\)"):
        selective_copy_task(5, 2, num_tokens=3)


def test_diagnose_selective_copy_runs_and_reports(tmp_path):
    from rnnkit.cli.main import main

    assert main(["diagnose", "selective-copy", "--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Selective copying" in report and "| minGRU |" in report and "| GRU |" in report
    rows = (tmp_path / "selective_copy.csv").read_text().splitlines()
    assert rows[0].startswith("model,parameters,val_token_accuracy") and len(rows) == 3
    assert (tmp_path / "selective_copy.png").stat().st_size > 0


def test_onnx_export_refuses_with_a_pointer_to_torch_export(tmp_path):
    pytest.importorskip("onnx")
    layer = rnnkit.RGLRU(INPUT, HIDDEN).eval()
    x = torch.randn(4, 2, INPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and progress warnings
        with pytest.raises(torch.onnx.errors.SymbolicValueError, match="no native ONNX node.*torch.export"):
            torch.onnx.export(layer, (x,), str(tmp_path / "legacy.onnx"), dynamo=False)
        with pytest.raises(Exception, match="no native ONNX node.*torch.export"):
            torch.onnx.export(layer, (x,), str(tmp_path / "dynamo.onnx"), dynamo=True, custom_translation_table=rnnkit.onnx_translation_table())


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_zoneout_and_locked_dropout_scan_equals_the_step_loop(cls):
    """Zoneout keeps the recurrence linear (a' = a + m(1 - a), b' = (1 - m) b): the scan runs, with the reference's masks."""
    options = dict(num_layers=2, bidirectional=True, zoneout=0.3, input_dropout=0.2, layer_dropout=0.1, output_dropout=0.2)
    fast, reference = pair(cls, **options)
    x = torch.randn(6, 3, INPUT, dtype=torch.float64)
    h0 = torch.randn(4, 3, HIDDEN, dtype=torch.float64)
    for training in (True, False):
        results = []
        for layer in (fast.train(training), reference.train(training)):
            torch.manual_seed(11)  # the layer draws its masks in one order, whatever the engine
            results.append(run_and_grads(layer, x, h0, [6, 2, 4]))
        for got, expected in zip(*results, strict=True):
            assert_close(got, expected, torch.float64, f"{cls.__name__} training={training}")
    with pytest.raises(ValueError, match=f"weight_drop: expected 0: {cls.__name__}'s gates read only the input"):
        cls(INPUT, HIDDEN, weight_drop=0.5)


def test_the_log_space_peer_computes_min_gru():
    """The benchmark's peer (minGRU-pytorch's log-space Heinsen scan) computes rnnkit.MinGRU's function: a fair comparison."""
    from benchmarks.scan import LogSpaceMinGRU

    torch.manual_seed(12)
    layer = rnnkit.MinGRU(INPUT, HIDDEN, dtype=torch.float64)
    x = torch.randn(30, 2, INPUT, dtype=torch.float64)
    assert_close(LogSpaceMinGRU(layer)(x)[0], layer(x)[0], torch.float64, "log-space scan vs rnnkit.MinGRU")


def test_scan_benchmark_quick_run_writes_targets_rows_and_plot(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out, plot = tmp_path / "scan.md", tmp_path / "scan.png"
    done = subprocess.run([sys.executable, "-W", "error", "-m", "benchmarks.scan", "--quick", "--out", str(out), "--plot", str(plot)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "## Targets" in text and "| 64 | 1 | log-space minGRU |" in text and "## Training-step peak memory (MB)" in text
    assert all(row.split("|")[3].strip() in ("MET", "MISSED") for row in text.splitlines() if row.startswith("| T=") or row.startswith("| B="))
    assert plot.stat().st_size > 0


def test_charlm_time_report_marks_the_target_against_the_gru():
    from benchmarks.charlm_time import render

    def result(cell, bpc):
        return {"cell": cell, "curve": [(0.0, 0, 4.0), (10.0, 50, bpc)], "threads": 2, "parameters": 1000}

    text = render([result("gru", 2.00), result("mingru", 2.015), result("rglru", 2.05)], 10.0, "docs/img/c.png", "docs/c.md")
    assert "| minGRU | 1,000 | 50 | 2.015 | +0.015 | MET |" in text
    assert "| RG-LRU | 1,000 | 50 | 2.050 | +0.050 | MISSED |" in text
    assert "](img/c.png)" in text


@pytest.mark.parametrize("cls", FAMILIES, ids=IDS)
def test_autocast_runs_the_projection_in_bf16_and_the_scan_in_float32(cls):
    """Autocast is honoured, not ignored: the one GEMM in bf16 (its result differs from float32's by bf16 rounding), the
    recurrence and the outputs in float32, gradients close to the float32 ones."""
    torch.manual_seed(13)
    layer = cls(INPUT, 16, bidirectional=True)
    x = torch.randn(7, 3, INPUT)
    exact = run_and_grads(layer, x, torch.zeros(2, 3, 16), [7, 3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = run_and_grads(layer, x, torch.zeros(2, 3, 16), [7, 3, 5])
    assert low[0].dtype == low[1].dtype == torch.float32
    assert not torch.equal(low[0], exact[0]), "the projection did not run in bf16: autocast was ignored"
    # Relative to each tensor's norm: about ten bf16 roundoffs (2^-8 each). minLSTM's gate gradients are differences of
    # nearly equal terms (f' = f / (f + i) moves f and i against each other), so its gradients through the bf16 GEMM show
    # about 10% there (measured 3-13%); its outputs and states stay within 0.1%.
    bound = 0.15 if cls is rnnkit.MinLSTM else 0.03
    for index, (got, expected) in enumerate(zip(low, exact, strict=True)):
        error = (got.float() - expected).norm() / expected.norm().clamp_min(1e-12)
        assert error <= (0.01 if index < 2 else bound), f"{cls.__name__} under autocast, result {index}: relative error {error:.4f}"
