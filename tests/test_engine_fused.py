"""The fused engine against the reference engine, on the compiled C++ path and the pure-PyTorch fallback.

Every comparison runs the same layer (same weights, same input, same RNG seed
for dropout) on ``engine="reference"`` and ``engine="fused"`` and compares the
outputs, final states and the gradients of the input, the initial state and
every parameter, under a loss that depends on both outputs and final states.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import engine
from rnnkit import ops as fused_build
from rnnkit.engine import fused, fused_loops, gemm

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
FAMILIES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


@pytest.fixture(params=["cpp", "fallback"])
def path(request, monkeypatch):
    """Run a test on the compiled loop kernel, then on the pure-PyTorch one."""
    if request.param == "cpp":
        if fused_build.native_loops() is None:
            pytest.skip(fused_build.status())
    else:
        monkeypatch.setattr(fused, "loops_for", lambda x: fused_loops)
    return request.param


def make_pair(family: str, input_size: int, hidden_size: int, dtype, **kwargs):
    if family == "lstm":
        cls = rnnkit.LSTM
    elif family == "gru":
        cls = rnnkit.GRU
        kwargs.pop("proj_size", None)
    else:
        cls = rnnkit.RNN
        kwargs.pop("proj_size", None)
        kwargs["nonlinearity"] = family.split("_")[1]
    reference = cls(input_size, hidden_size, engine="reference", dtype=dtype, **kwargs)
    candidate = cls(input_size, hidden_size, engine="fused", dtype=dtype, **kwargs)
    candidate.load_state_dict(reference.state_dict())
    return reference, candidate


def run_and_differentiate(layer, x, hx, lengths, packed: bool, seed: int):
    """Outputs, final states and gradients of a loss that reads both outputs and final states."""
    torch.manual_seed(seed)  # the same dropout masks for both engines
    inputs = [t for t in (x, *(hx if isinstance(hx, tuple) else (hx,))) if t is not None]
    if packed:
        output, state = layer(pack_padded_sequence(x, lengths, batch_first=layer.batch_first, enforce_sorted=False), hx)
        output = pad_packed_sequence(output, batch_first=layer.batch_first)[0]
    else:
        output, state = layer(x, hx, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)
    loss = (output * weights).sum() + sum((s * s).sum() for s in states)
    grads = torch.autograd.grad(loss, inputs + list(layer.parameters()))
    return [output, *states, *grads]


def assert_close_lists(expected, actual, dtype):
    assert len(expected) == len(actual)
    for index, (e, a) in enumerate(zip(expected, actual)):
        torch.testing.assert_close(a, e, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype], msg=lambda m: f"item {index}: {m}")


def random_config(rng: random.Random, family: str):
    hidden = rng.choice([5, 16, 40, 70])
    config = {
        "num_layers": rng.randint(1, 3),
        "bidirectional": rng.random() < 0.5,
        "batch_first": rng.random() < 0.5,
        "bias": rng.random() < 0.75,
        "proj_size": rng.choice([0, 0, 3]) if family == "lstm" else 0,
    }
    if config["num_layers"] > 1 and rng.random() < 0.4:
        config["dropout"] = 0.3
    shape = {
        "length": rng.randint(1, 6),
        "batch": rng.choice([1, 2, 3, 13]),  # 13 = 8 + 4 + 1: every row tile of the GEMM kernel
        "input": rng.randint(1, 7),
        "hidden": hidden,
    }
    inputs = {"lengths": rng.random() < 0.5, "packed": rng.random() < 0.3, "hx": rng.random() < 0.5}
    return config, shape, inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_random_configs_match_reference(path, family, dtype):
    rng = random.Random(f"{family}-{dtype}-{path}")
    for case in range(6):
        config, shape, inputs = random_config(rng, family)
        torch.manual_seed(case)
        reference, candidate = make_pair(family, shape["input"], shape["hidden"], dtype, **config)
        length, batch = shape["length"], shape["batch"]
        x = torch.randn((batch, length, shape["input"]) if config["batch_first"] else (length, batch, shape["input"]), dtype=dtype, requires_grad=True)
        lengths = None
        if inputs["lengths"] or inputs["packed"]:
            lengths = torch.randint(1, length + 1, (batch,))
            lengths[0] = length
        hx = None
        if inputs["hx"]:
            stacked = config["num_layers"] * (2 if config["bidirectional"] else 1)
            h0 = torch.randn(stacked, batch, config["proj_size"] or shape["hidden"], dtype=dtype, requires_grad=True)
            hx = (h0, torch.randn(stacked, batch, shape["hidden"], dtype=dtype, requires_grad=True)) if family == "lstm" else h0
        packed = inputs["packed"]
        expected = run_and_differentiate(reference, x, hx, lengths, packed, seed=case)
        actual = run_and_differentiate(candidate, x, hx, lengths, packed, seed=case)
        assert_close_lists(expected, actual, dtype)


@pytest.fixture
def two_threads():
    """The C++ loop splits hidden units across threads (conftest runs tests on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_split_hidden_units(path, two_threads, family):
    # H = 70 and proj 37 split unevenly into 16-aligned slices; batch 13 uses every row tile
    reference, candidate = make_pair(family, 5, 70, torch.float64, bidirectional=True, proj_size=37)
    x = torch.randn(6, 13, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4, 6, 1, 2, 5, 6, 3])
    expected = run_and_differentiate(reference, x, None, lengths, False, seed=0)
    actual = run_and_differentiate(candidate, x, None, lengths, False, seed=0)
    assert_close_lists(expected, actual, torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_split_batch_rows(path, two_threads, family):
    # 19 rows and two threads: each runs 9 or 10 rows alone (share_rows in csrc/loop_common.h), in training and inference
    reference, candidate = make_pair(family, 5, 70, torch.float64, bidirectional=True, num_layers=2)
    x = torch.randn(6, 19, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1, 6, 3, 4, 6, 1, 2, 5, 6, 3, 6, 6, 2, 4, 1, 5])
    expected = run_and_differentiate(reference, x, None, lengths, False, seed=0)
    actual = run_and_differentiate(candidate, x, None, lengths, False, seed=0)
    assert_close_lists(expected, actual, torch.float64)
    with torch.no_grad():
        assert_close_lists(list(reference(x, lengths=lengths)[:1]), list(candidate(x, lengths=lengths)[:1]), torch.float64)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("batch", [4, 19], ids=["by-units", "by-rows"])
def test_two_threads_give_one_thread_s_results(batch, autocast):
    """The compiled loops on two threads, which split 4 rows by hidden units and 19 by rows, against one thread;
    under bf16 autocast that covers the bf16 operands' loops (hardware dot products where the CPU has them). On an AMD
    EPYC they agree bit for bit; the GEMMs around the loops may legitimately round differently on other CPUs."""
    if fused_build.native_loops() is None:
        pytest.skip(fused_build.status())

    def run(family, threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            layer = family(24, 64, num_layers=2, bidirectional=True)
            x = torch.randn(9, batch, 24, requires_grad=True)
            lengths = torch.tensor([9, 3, 7, 1, 9, 5, 2, 8, 6, 4, 9, 1, 3, 7, 5, 9, 2, 6, 8][:batch])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y, _ = layer(x, lengths=lengths)
                with torch.no_grad():
                    inferred, _ = layer(x, lengths=lengths)
            return [y, inferred, *torch.autograd.grad(y.float().square().sum(), [x, *layer.parameters()])]
        finally:
            torch.set_num_threads(previous)

    for family in (rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN):
        for index, (one, two) in enumerate(zip(run(family, 1), run(family, 2), strict=True)):
            torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5, msg=lambda m, i=index, f=family: f"{f.__name__} item {i}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_batch(path, family):
    reference, candidate = make_pair(family, 3, 4, torch.float32, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    expected = run_and_differentiate(reference, x, None, None, False, seed=0)
    actual = run_and_differentiate(candidate, x, None, None, False, seed=0)
    assert_close_lists(expected, actual, torch.float32)


def fused_function_inputs(family: str, proj: bool, bias: bool, masked: bool):
    """Small float64 inputs of FusedRecurrence.apply, every differentiable one requiring grad."""
    gates = {"lstm": 4, "gru": 3}.get(family, 1)
    length, batch, features, hidden = 4, 3, 2, 3
    out = 2 if proj else hidden

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    valid = None
    if masked:
        valid = torch.arange(length).unsqueeze(1) < torch.tensor([4, 2, 1]).unsqueeze(0)
    return (
        valid, leaf(length, batch, features), leaf(gates * hidden, features), leaf(gates * hidden, out),
        leaf(gates * hidden) if bias else None, leaf(gates * hidden) if bias else None,
        leaf(out, hidden) if proj else None, leaf(batch, out), leaf(batch, hidden) if family == "lstm" else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "family, proj, bias, masked, reverse",
    [
        ("rnn_tanh", False, True, True, False),
        ("rnn_relu", False, True, False, True),
        ("lstm", False, True, True, True),
        ("lstm", True, False, True, False),
        ("gru", False, True, True, True),
        ("gru", False, False, False, False),
    ],
)
def test_gradcheck_and_gradgradcheck(path, family, proj, bias, masked, reverse):
    """First order through the compiled backward; second order through the reference math (create_graph)."""
    kind = fused_loops.KINDS[family]
    valid, *tensors = fused_function_inputs(family, proj, bias, masked)
    present = [t for t in tensors if t is not None]

    def function(*args):
        full = iter(args)
        x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = (None if t is None else next(full) for t in tensors)
        y, h_n, c_n = fused._recurrence(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, valid, reverse)
        return (y, h_n, c_n) if kind == fused_loops.LSTM else (y, h_n)

    assert torch.autograd.gradcheck(function, tuple(present), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(function, tuple(present), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_single_steps_for_inference_match_reference(path, family, dtype, monkeypatch):
    # Length-1 inputs under no_grad take the stacked one-step kernel on the compiled path (one call for every layer
    # and direction); state carried across calls.
    calls = []
    stacked = fused_build.NativeLoops.stacked_step_kernel.fget
    spy = property(lambda self: lambda *args: calls.append(1) or stacked(self)(*args))
    monkeypatch.setattr(fused_build.NativeLoops, "stacked_step_kernel", spy)
    reference, fast = make_pair(family, 5, 7, dtype, num_layers=2, bidirectional=True, batch_first=True)
    torch.manual_seed(6)
    steps = torch.randn(4, 3, 1, 5, dtype=dtype) * 3
    states = {}
    with torch.no_grad():
        for step in steps:
            outputs = {}
            for name, layer in (("reference", reference), ("fast", fast)):
                outputs[name], states[name] = layer(step, states.get(name))
            torch.testing.assert_close(outputs["fast"], outputs["reference"], atol=TOLERANCE[dtype], rtol=0)
            for a, b in zip(*(as_tuple(states[n]) for n in ("fast", "reference")), strict=True):
                torch.testing.assert_close(a, b, atol=TOLERANCE[dtype], rtol=0)
        assert len(calls) == (4 if path == "cpp" else 0)  # one call a step
        before = [t.clone() for t in as_tuple(states["fast"])]
        outputs["fast"].zero_()  # the returned state is not a view of the output
        assert all(torch.equal(a, b) for a, b in zip(before, as_tuple(states["fast"])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_inference_matches_reference(path, two_threads, family, dtype, monkeypatch):
    # Under no_grad the compiled path runs forward_inference: input projections a chunk of steps at
    # a time, two state slots. Batch 64 x hidden 128 makes chunks of 8 (LSTM), 10 (GRU) or 32 (RNN)
    # steps, so 37 steps end on a partial chunk; lengths, both directions, stacking and proj_size too.
    calls = []
    inference = fused_build.NativeLoops.forward_inference
    monkeypatch.setattr(fused_build.NativeLoops, "forward_inference", lambda self, *args: calls.append(1) or inference(self, *args))
    monkeypatch.setattr(fused, "ONEDNN_LSTM_MIN_BATCH_HIDDEN", 1 << 40)  # the compiled loop for every LSTM here too
    extra = {"proj_size": 40} if family == "lstm" else {}
    torch.manual_seed(3)
    for config in ({}, {"num_layers": 2, "bidirectional": True, **extra}, {"bias": False}):
        reference, fast = make_pair(family, 9, 128, dtype, **config)
        x = torch.randn(37, 64, 9, dtype=dtype) * 2
        lengths = torch.randint(1, 38, (64,))
        for given_lengths in (None, lengths):
            with torch.no_grad():
                expected, actual = (layer(x, lengths=given_lengths) for layer in (reference, fast))
            for e, a in zip((expected[0], *as_tuple(expected[1])), (actual[0], *as_tuple(actual[1])), strict=True):
                torch.testing.assert_close(a, e, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    layer_directions = (1 + 2 * 2 + 1) * 2  # per config, each run with and without lengths
    assert len(calls) == (layer_directions if path == "cpp" else 0)


def test_large_lstm_inference_dispatches_to_onednn(monkeypatch):
    # torch.nn.LSTM's own CPU kernel: for float32 inference without padding or proj_size, once batch x hidden >= 1024
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    calls = []
    primitive = torch.mkldnn_rnn_layer
    monkeypatch.setattr(torch, "mkldnn_rnn_layer", lambda *args: calls.append(args[7]) or primitive(*args))
    torch.manual_seed(4)
    x = torch.randn(6, 16, 5)
    for config in ({"num_layers": 2, "bidirectional": True}, {"bias": False}):
        reference, fast = make_pair("lstm", 5, 64, torch.float32, **config)
        with torch.no_grad():
            expected, actual = reference(x), fast(x)
        for e, a in zip((expected[0], *expected[1]), (actual[0], *actual[1]), strict=True):
            torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    assert calls == [False, True, False, True, False]  # the `reverse` flag of each layer-direction
    calls.clear()
    reference, fast = make_pair("lstm", 5, 64, torch.float32, proj_size=8)
    with torch.no_grad():
        padded = torch.tensor([6] * 15 + [3])
        fast(x), fast.double()(x.double()), fast.float()(x[:, :8])  # proj, float64, 8 x 64 < 1024
        plain = rnnkit.LSTM(5, 64)
        plain(x, lengths=padded), plain(x[:, :15])  # padding, 15 x 64 < 1024
        assert calls == []
        torch.backends.mkldnn.enabled = False  # (its flags() context manager warns about TF32)
        try:
            plain(x)
        finally:
            torch.backends.mkldnn.enabled = True
        assert calls == []
        plain(x)
    assert calls == [False]


def test_lstm_inference_with_a_large_output_and_a_small_w_hh_stays_in_the_loop(monkeypatch):
    # oneDNN writes an output of 32 MiB or more into fresh pages every call; the loop writes it into a pooled buffer
    if not torch.backends.mkldnn.is_available() or fused_build.native_loops() is None:
        pytest.skip("needs oneDNN and the compiled library")
    calls, loops = [], []
    primitive, inference = torch.mkldnn_rnn_layer, fused_build.NativeLoops.forward_inference
    monkeypatch.setattr(torch, "mkldnn_rnn_layer", lambda *args: calls.append(1) or primitive(*args))
    monkeypatch.setattr(fused_build.NativeLoops, "forward_inference", lambda self, *args: loops.append(1) or inference(self, *args))
    torch.manual_seed(5)
    reference, fast = make_pair("lstm", 5, 64, torch.float32)
    x = torch.randn(8, 16, 5)  # 16 x 64 >= 1024; output 8 x 16 x 64 floats = 32 KiB, W_hh 64 KiB
    monkeypatch.setattr(fused, "LOOP_MIN_OUTPUT_BYTES", 8 * 16 * 64 * 4)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], reference(x)[0], atol=1e-5, rtol=1e-5)
        assert (calls, loops) == ([], [1])
        fast(x[:7])  # one step less: under the output threshold, to oneDNN
        assert (calls, loops) == ([1], [1])
        monkeypatch.setattr(fused, "LOOP_MAX_W_HH_BYTES", 4 * 64 * 64 * 4 - 1)  # W_hh one byte too large: oneDNN
        fast(x)
        assert (calls, loops) == ([1, 1], [1])


def test_inference_path_only_without_gradients(monkeypatch):
    calls = []
    inference = fused_build.NativeLoops.forward_inference
    monkeypatch.setattr(fused_build.NativeLoops, "forward_inference", lambda self, *args: calls.append(1) or inference(self, *args))
    if fused_build.native_loops() is None:
        pytest.skip(fused_build.status())
    layer = rnnkit.GRU(3, 8)
    x = torch.randn(5, 2, 3)
    y, _ = layer(x)  # parameters require grad: the autograd path
    assert y.requires_grad and not calls
    with torch.no_grad():
        layer(x)
    assert len(calls) == 1
    layer.requires_grad_(False)
    layer(x)  # nothing requires grad, grad mode on
    assert len(calls) == 2
    y, _ = layer(x.requires_grad_())  # the input does: autograd again
    assert y.requires_grad and len(calls) == 2


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def test_auto_picks_fused_and_describe_says_why():
    layer = rnnkit.LSTM(3, 4)
    assert engine.resolve("auto") is fused.run_direction
    text = engine.describe(layer)
    assert text.startswith("engine='auto': fused ")
    assert ("C++" in text) == (fused_build.native_loops() is not None)
    assert "oneDNN's LSTM primitive once batch x hidden >= 1024" in text
    assert "oneDNN" not in engine.describe(rnnkit.GRU(3, 4)) + engine.describe(rnnkit.LSTM(3, 4, proj_size=2))
    assert engine.describe(rnnkit.GRU(3, 4, engine="reference")).startswith("reference")


def test_no_build_env_forces_the_fallback():
    code = "import rnnkit, rnnkit.engine as e; print(e.describe(rnnkit.GRU(2, 3)))"
    env = {"RNNKIT_ENGINE_NO_BUILD": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert "fused pure-PyTorch fallback: RNNKIT_ENGINE_NO_BUILD=1 is set" in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fallback_runs_on_cuda():
    reference, candidate = make_pair("gru", 3, 8, torch.float64, num_layers=2, bidirectional=True)
    reference.cuda(), candidate.cuda()
    x = torch.randn(5, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    expected = run_and_differentiate(reference, x, None, [5, 3], False, seed=0)
    actual = run_and_differentiate(candidate, x, None, [5, 3], False, seed=0)
    assert_close_lists(expected, actual, torch.float64)


def test_autocast_returns_torch_nn_dtypes_near_float32(path):
    torch.manual_seed(3)
    layer = rnnkit.LSTM(4, 8, num_layers=2, engine="fused")
    x = torch.randn(5, 2, 4)
    expected, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual, (h_n, _) = layer(x)
    assert actual.dtype == h_n.dtype == torch.bfloat16  # as torch.nn.LSTM; more in tests/test_autocast.py
    torch.testing.assert_close(actual.float(), expected, atol=2e-2, rtol=2e-2)


def test_unsupported_specs_and_dtypes_still_run():
    torch.manual_seed(4)
    reference, candidate = make_pair("gru", 3, 8, torch.bfloat16)  # no C++ kernel for bfloat16: the Python loop
    x = torch.randn(4, 2, 3, dtype=torch.bfloat16)
    torch.testing.assert_close(candidate(x)[0], reference(x)[0], atol=2e-2, rtol=2e-2)
    norm = rnnkit.GRU(3, 8, layer_norm=True, engine="fused")  # no fused kernel: the hoisted loop
    assert "runs the hoisted loop" in engine.describe(norm)
    assert norm(torch.randn(4, 2, 3))[0].shape == (4, 2, 8)
    projected = rnnkit.LSTM(3, 8, proj_size=2, layer_norm=True, engine="fused")
    assert "runs the hoisted loop" in engine.describe(projected)
    if fused_build.native_loops() is not None:
        assert "LayerNorm LSTM kernel" in engine.describe(rnnkit.LSTM(3, 8, layer_norm=True))


@pytest.mark.parametrize(
    "rows, inner, outer, expected",
    [(16384, 128, 2048, "pooled"), (8192, 64, 1024, "pooled"), (8191, 64, 1024, "onednn"), (3200, 256, 64, "onednn"), (3200, 64, 1024, "onednn"),
     (1000, 32, 512, "mkl"), (1000, 128, 32, "mkl"), (8, 16, 64, "mkl")],
)
def test_input_projection_gemm_is_a_fixed_choice_of_shape(monkeypatch, rows, inner, outer, expected):
    """Run-time timing would let two runs pick different GEMMs and compute different numbers. An output of 32 MiB
    (8192 x 1024 floats) or more goes to MKL into a pooled buffer, one row less to oneDNN."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    if expected == "pooled" and fused_build.native_loops() is None:
        pytest.skip("the compiled library did not build")
    calls = []
    for name, kernel in (("onednn", gemm.mkldnn_linear), ("mkl", gemm.addmm_linear)):
        monkeypatch.setattr(gemm, kernel.__name__, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    pooled = fused_build.NativeLoops.projection
    monkeypatch.setattr(fused_build.NativeLoops, "projection", lambda self, *a: calls.append("pooled") or pooled(self, *a))
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((rows, inner), (outer, inner), (outer,)))
    first, second = gemm.linear(x, weight, bias), gemm.linear(x, weight, bias)
    assert calls == [expected, expected]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, torch.addmm(bias, x, weight.t()), rtol=1e-5, atol=1e-4)
    assert gemm.linear(x.double(), weight.double(), bias.double()).dtype == torch.float64 and calls[-1] == "mkl"
    weight.requires_grad_()  # oneDNN's op has no autograd formula: a recorded product must take addmm
    gemm.linear(x, weight, bias).sum().backward()
    assert calls[-1] == "mkl"
    torch.testing.assert_close(weight.grad, x.sum(0).expand_as(weight), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(fused_build.native_loops() is None, reason=fused_build.status())
@pytest.mark.parametrize("threads", [1, 2])
def test_padded_steps_of_gru_write_hn_as_the_python_loop_does(threads):
    # hn is unread by backward at a padded step, but it is a result of the op: the value the step would have had, never
    # stale memory (which the pool hands out) that differs from the Python loop's and from call to call
    native = fused_build.native_loops()
    generator = torch.Generator().manual_seed(3)
    steps, batch, hidden = 6, 20, 32
    xp = torch.randn(steps, batch, 3 * hidden, generator=generator)
    h0, b_hn = torch.randn(batch, hidden, generator=generator), torch.randn(hidden, generator=generator)
    w_hh = torch.randn(3 * hidden, hidden, generator=generator) / hidden**0.5
    valid = torch.rand(steps, batch, generator=generator) > 0.4
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # two threads with 20 rows: each runs its own rows
    try:
        for reverse in (False, True):
            want = fused_loops.forward_loop(fused_loops.GRU, xp.clone(), h0, torch.empty(0), w_hh, b_hn, None, valid, reverse)[3]
            for _ in range(2):
                got = native.forward_loop(fused_loops.GRU, xp.clone(), h0, torch.empty(0), w_hh, b_hn, None, valid, reverse)[3]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)
