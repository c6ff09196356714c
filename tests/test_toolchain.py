"""The PyTorch toolchain on rnnkit's layers: every transform gives the reference engine's result, or raises.

One matrix of configurations (family x options) runs through each transform on the
default engine, against the reference engine (and torch.nn where it has a twin):
double backward, torch.func (grad, jacrev, jacfwd, vmap, vmap of grad), checkpointing,
torch.compile (no graph break, no unrolling over time, no recompilation for a new batch
or length), torch.export (dynamic batch and time, saved and loaded), torch.jit.trace
(with grad and under no_grad, saved and loaded in a fresh process) and ONNX (both
exporters, run by onnxruntime at a new batch and length: tests/test_toolchain_onnx.py).
See docs/toolchain.md.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch.utils.checkpoint import checkpoint

import rnnkit
from helpers import as_tuple, torch_twin

# (id, class, constructor arguments); the LayerNorm variants have no torch.nn twin.
CONFIGS = [
    ("rnn", rnnkit.RNN, {}),
    ("lstm-bi-stacked", rnnkit.LSTM, {"num_layers": 2, "bidirectional": True}),
    ("gru-bi", rnnkit.GRU, {"bidirectional": True}),
    ("lstm-proj", rnnkit.LSTM, {"proj_size": 3}),
    ("ln-lstm", rnnkit.LSTM, {"layer_norm": True, "bidirectional": True}),
    ("ln-gru", rnnkit.GRU, {"layer_norm": True}),
]
IDS = [c[0] for c in CONFIGS]
TWINNED = [c for c in CONFIGS if "layer_norm" not in c[2]]
INPUT, HIDDEN = 3, 5
LENGTHS = [6, 2, 4]


def pair(cls, kwargs, dtype=torch.float64):
    """The layer on the default engine, and the same weights on the reference engine."""
    fast = cls(INPUT, HIDDEN, dtype=dtype, **kwargs)
    with torch.no_grad():  # LayerNorm gains off their initial 1 and 0, so that every gradient is exercised
        for name, p in fast.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    reference = cls(INPUT, HIDDEN, dtype=dtype, engine="reference", **kwargs)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def initial_state(layer, batch, dtype=torch.float64):
    stacked = layer.num_layers * layer.num_directions
    h0 = torch.randn(stacked, batch, layer.proj_size or HIDDEN, dtype=dtype)
    return (h0, torch.randn(stacked, batch, HIDDEN, dtype=dtype)) if isinstance(layer, rnnkit.LSTM) else h0


def flat(output, state):
    return (output, *as_tuple(state))


# -- double backward -------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls, kwargs", CONFIGS, ids=IDS)
def test_gradgradcheck_against_finite_differences(name, cls, kwargs):
    fast, _ = pair(cls, kwargs)
    names = [n for n, _ in fast.named_parameters()]
    x = torch.randn(6, 3, INPUT, dtype=torch.float64, requires_grad=True)
    hx = tuple(t.requires_grad_() for t in as_tuple(initial_state(fast, 3)))  # lengths hold two of three sequences
    params = tuple(p.detach().clone().requires_grad_() for p in fast.parameters())

    def run(x, *tensors):
        state = tensors[: len(hx)]
        out, final = torch.func.functional_call(fast, dict(zip(names, tensors[len(hx) :])), (x, state if len(state) == 2 else state[0]), {"lengths": LENGTHS})
        return flat(out, final)

    assert torch.autograd.gradgradcheck(run, (x, *hx, *params), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name, cls, kwargs", TWINNED, ids=[c[0] for c in TWINNED])
def test_gradient_penalty_equals_torch_nn(name, cls, kwargs):
    """The issue's example: loss + |d loss / d x|^2, whose second term fused@once_differentiable used to drop."""
    fast, _ = pair(cls, kwargs, dtype=torch.float32)
    twin = torch_twin(fast)
    x = torch.randn(7, 2, INPUT)
    grads = []
    for layer in (fast, twin):
        xi = x.clone().requires_grad_()
        out = layer(xi)[0]
        (g,) = torch.autograd.grad(out.sum(), xi, create_graph=True)
        (out.pow(2).sum() + g.pow(2).sum()).backward()
        grads.append([p.grad for p in layer.parameters()])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# -- torch.func --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls, kwargs", CONFIGS, ids=IDS)
def test_torch_func_transforms_give_the_reference_results(name, cls, kwargs):
    fast, reference = pair(cls, kwargs)
    params = {n: p.detach() for n, p in fast.named_parameters()}
    x = torch.randn(5, 3, INPUT, dtype=torch.float64)

    def loss(layer):
        return lambda p, xs: torch.func.functional_call(layer, p, (xs,))[0].pow(2).sum()

    def per_sample(layer):  # vmap over the batch of grad of one sequence (1, L, H_in): per-sample gradients
        one = lambda p, xs: loss(layer)(p, xs.unsqueeze(1))  # noqa: E731
        return torch.func.vmap(torch.func.grad(one), in_dims=(None, 1))(params, x)

    for name_, (ours, theirs) in {
        "grad": (torch.func.grad(loss(fast))(params, x), torch.func.grad(loss(reference))(params, x)),
        "vmap(grad)": (per_sample(fast), per_sample(reference)),
    }.items():
        for key in params:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-10, rtol=1e-10, msg=lambda m, k=key, t=name_: f"{t} {k}: {m}")
    out = lambda layer: lambda xs: layer(xs)[0]  # noqa: E731
    short = x[:3, :2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forward AD loads its decompositions through torch.jit.script
        for transform in (torch.func.jacrev, torch.func.jacfwd):
            torch.testing.assert_close(transform(out(fast))(short), transform(out(reference))(short), atol=1e-10, rtol=1e-10)
    batched = torch.func.vmap(out(fast), in_dims=1, out_dims=1)(x.unsqueeze(2))  # vmap over the batch: (L, N, 1, H)
    torch.testing.assert_close(batched.squeeze(2), reference(x)[0], atol=1e-10, rtol=1e-10)


# -- checkpointing -----------------------------------------------------------------------------


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name, cls, kwargs", CONFIGS[:3] + CONFIGS[4:5], ids=IDS[:3] + IDS[4:5])
def test_checkpoint_gives_the_plain_gradients(name, cls, kwargs, reentrant):
    fast, _ = pair(cls, kwargs)
    x = torch.randn(6, 3, INPUT, dtype=torch.float64)
    results = []
    for wrapped in (False, True):
        fast.zero_grad()
        xi = x.clone().requires_grad_()
        run = lambda a: fast(a, lengths=LENGTHS)[0]  # noqa: E731
        out = checkpoint(run, xi, use_reentrant=reentrant) if wrapped else run(xi)
        out.pow(2).sum().backward()
        results.append([xi.grad] + [p.grad.clone() for p in fast.parameters()])
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-12, rtol=1e-12)


# -- torch.compile -----------------------------------------------------------------------------


class GraphRecorder:
    """An AOTAutograd backend that keeps the forward and backward graphs it is given and runs them as they are."""

    def __init__(self) -> None:
        self.forward, self.backward = [], []
        from functorch.compile import make_boxed_func

        self.backend = aot_autograd(
            fw_compiler=lambda gm, _: self.forward.append(gm) or make_boxed_func(gm.forward),
            bw_compiler=lambda gm, _: self.backward.append(gm) or make_boxed_func(gm.forward),
        )


def targets(gm) -> set[str]:
    return {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("name, cls, kwargs", CONFIGS, ids=IDS)
def test_compile_fullgraph_dynamic_equals_eager_without_unrolling(name, cls, kwargs):
    torch._dynamo.reset()
    fast, _ = pair(cls, kwargs, dtype=torch.float32)
    recorder = GraphRecorder()
    compiled = torch.compile(fast, fullgraph=True, dynamic=True, backend=recorder.backend)
    # A new batch size and length: no recompilation. The sizes differ from every fixed size of the layer
    # (a batch equal to INPUT or to num_layers * num_directions would be specialised along with it).
    for length, batch in ((6, 7), (9, 11)):
        x = torch.randn(length, batch, INPUT)
        hx = initial_state(fast, batch, torch.float32)
        lengths = torch.tensor([length] + [1 + 3 * i % length for i in range(batch - 1)])
        results = []
        for layer in (compiled, fast):
            fast.zero_grad()
            xi = x.clone().requires_grad_()
            out, state = layer(xi, hx, lengths=lengths)
            sum(t.pow(2).sum() for t in flat(out, state)).backward()
            results.append([*flat(out, state), xi.grad, *(p.grad.clone() for p in fast.parameters())])
        for got, expected in zip(*results, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert len(recorder.forward) == 1 and len(recorder.backward) == 1, "recompiled for a new batch size or length"
    # One graph served both lengths, so time was not unrolled into it; the recurrences are rnnkit's ops.
    calls = [n for gm in (recorder.forward[0], recorder.backward[0]) for n in gm.graph.nodes if "rnnkit" in f"{n.target}{n.args}"]
    assert len(calls) >= fast.num_layers * fast.num_directions, sorted(targets(recorder.forward[0]) | targets(recorder.backward[0]))


def test_compile_with_inductor_equals_eager():
    torch._dynamo.reset()
    fast, _ = pair(rnnkit.GRU, {"bidirectional": True}, dtype=torch.float32)
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(5, 2, INPUT, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # inductor's own use of torch.jit
        out = compiled(x)[0]
        out.sum().backward()
        with torch.no_grad():
            inferred = compiled(x)[0]
    torch.testing.assert_close(out, fast(x)[0], atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # the inference kernel, with no history, inside the compiled graph
        torch.testing.assert_close(inferred, fast(x)[0], atol=1e-6, rtol=1e-6)


# -- torch.export ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls, kwargs", CONFIGS, ids=IDS)
def test_export_dynamic_batch_and_time_saved_and_loaded(name, cls, kwargs, tmp_path):
    fast, _ = pair(cls, kwargs, dtype=torch.float32)
    fast.eval()
    x = torch.randn(6, 3, INPUT)
    time, batch = torch.export.Dim("time"), torch.export.Dim("batch")
    program = torch.export.export(fast, (x,), dynamic_shapes={"input": {0: time, 1: batch}})
    torch.export.save(program, tmp_path / "layer.pt2")
    loaded = torch.export.load(tmp_path / "layer.pt2").module()
    x2 = torch.randn(11, 5, INPUT)
    with torch.no_grad():
        for got, expected in zip(flat(*loaded(x2)), flat(*fast(x2)), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


# -- torch.jit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("grad_mode", [True, False], ids=["traced-with-grad", "traced-under-no-grad"])
@pytest.mark.parametrize("name, cls, kwargs", CONFIGS[:3], ids=IDS[:3])
def test_jit_trace_trains_and_reloads_in_a_fresh_process(name, cls, kwargs, grad_mode, tmp_path):
    fast, _ = pair(cls, kwargs, dtype=torch.float32)
    x = torch.randn(6, 3, INPUT)
    with torch.set_grad_enabled(grad_mode), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace is deprecated, and still used
        traced = torch.jit.trace(fast, (x,))
    assert any(node.kind() == "rnnkit::recurrence" for node in traced.graph.nodes())
    x2 = torch.randn(9, 4, INPUT)
    traced(x2)[0].pow(2).sum().backward()
    traced_grads = [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    fast(x2)[0].pow(2).sum().backward()
    for got, expected in zip(traced_grads, (p.grad for p in fast.parameters()), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    with torch.no_grad():
        torch.save(x2, tmp_path / "x.pt")
        expected = fast(x2)[0]
    script = (
        "import sys, torch, rnnkit\n"
        "rnnkit.ops.load()\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"print(float((m(torch.load({str(tmp_path / 'x.pt')!r}))[0]).sum()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert abs(float(result.stdout.strip()) - float(expected.sum())) < 1e-4


def test_jit_script_refuses_with_a_pointer_to_trace_export_and_compile():
    model = torch.nn.Sequential(rnnkit.GRU(3, 4))
    with pytest.raises(RuntimeError, match="torch.jit.trace .* torch.export or torch.compile"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model)


def test_kernels_refuse_calls_that_autograd_would_record():
    """The compiled ops have no derivative of their own: called with grad on, they raise rather than stop gradients."""
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    x, h = torch.randn(2, 3, requires_grad=True), torch.randn(2, 4)
    w_ih, w_hh = torch.randn(4, 3), torch.randn(4, 4)
    with pytest.raises(RuntimeError, match="rnnkit_fused::cell_step has no autograd formula"):
        torch.ops.rnnkit_fused.cell_step(0, x, h, h, w_ih, w_hh, None, None)
    with torch.no_grad():
        (h_new, _) = torch.ops.rnnkit_fused.cell_step(0, x, h, h, w_ih, w_hh, None, None)
    torch.testing.assert_close(h_new, torch.tanh(x @ w_ih.t() + h @ w_hh.t()))


@pytest.mark.parametrize("kind, family", [(0, "rnn"), (2, "lstm"), (3, "gru")])
def test_fake_kernels_match_the_real_kernels(kind, family):
    """torch.library.opcheck: schema, and the fake kernel against the real outputs, for the sequence ops."""
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    gates = {2: 4, 3: 3}.get(kind, 1)
    length, batch, hidden = 4, 3, 5
    xp = torch.randn(length, batch, gates * hidden)
    h0 = torch.randn(batch, hidden)
    c0 = torch.randn(batch, hidden) if kind == 2 else torch.empty(0)
    w_hh = torch.randn(gates * hidden, hidden)
    b_hn = torch.randn(hidden) if kind == 3 else None
    valid = torch.arange(length).unsqueeze(1) < torch.tensor([4, 2, 1])
    for mask in (None, valid):
        args = (kind, xp.clone(), h0, c0, w_hh, b_hn, None, mask, False)
        torch.library.opcheck(torch.ops.rnnkit_fused.forward_loop, args, test_utils=("test_schema", "test_faketensor"))
    x, w_ih = torch.randn(length, batch, 2), torch.randn(gates * hidden, 2)
    torch.library.opcheck(
        torch.ops.rnnkit_fused.forward_inference, (kind, x, w_ih, None, h0, c0, w_hh, b_hn, None, valid, True), test_utils=("test_schema", "test_faketensor")
    )


# -- differences found by PyTorch's own RNN tests ----------------------------------------------


def test_dropout_one_drops_everything_between_layers_like_torch():
    layer = rnnkit.GRU(INPUT, HIDDEN, num_layers=2, dropout=1.0)
    twin = torch_twin(layer)
    x = torch.randn(4, 2, INPUT)
    for module in (layer, twin):
        module.train()
    # With every input of layer 2 dropped, its output is the recurrence of zeros: the same for any x.
    torch.testing.assert_close(layer(x)[0], layer(torch.randn(4, 2, INPUT))[0])
    torch.testing.assert_close(layer(x)[0], twin(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [rnnkit.RNNCell, rnnkit.GRUCell, rnnkit.LSTMCell])
def test_zero_size_hidden_cells_return_empty_states_like_torch(cls):
    cell = cls(7, 0)
    twin = {rnnkit.RNNCell: torch.nn.RNNCell, rnnkit.GRUCell: torch.nn.GRUCell, rnnkit.LSTMCell: torch.nn.LSTMCell}[cls](7, 0)
    x = torch.randn(3, 7, requires_grad=True)
    for ours, theirs in zip(as_tuple(cell(x)), as_tuple(twin(x)), strict=True):
        assert ours.shape == theirs.shape == (3, 0)


def test_flat_weights_lists_the_parameters_in_torch_order():
    layer = rnnkit.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, proj_size=2)
    twin = torch_twin(layer)
    assert layer._flat_weights_names == twin._flat_weights_names
    for ours, theirs in zip(layer._flat_weights, twin._flat_weights, strict=True):
        assert torch.equal(ours, theirs)
