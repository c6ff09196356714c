"""The kernels' buffer pool (csrc/buffer_pool.h): reuse, its limit, the profiler's view, threads, and poisoned buffers.

A pooled buffer is not fresh zeroed memory: a kernel that read an element of its output before writing it
would pass on fresh pages and fail here, where every buffer handed out is filled with NaN bytes first.
"""

from __future__ import annotations

import gc
import threading
import warnings

import pytest
import torch

import rnnkit
from rnnkit import ops

pytestmark = pytest.mark.skipif(ops.native_loops() is None, reason="the compiled library did not build")

MIB = 1 << 20


@pytest.fixture(autouse=True)
def emptied_pool():
    """Start from an empty cache, so that which block serves a request does not depend on earlier tests."""
    gc.collect()  # no pooled tensor of an earlier test may be freed half-way through this one
    limit = ops.buffer_pool_limit()
    ops.buffer_pool_limit(0)
    ops.buffer_pool_limit(limit)


@pytest.fixture
def poisoned():
    """Every request pooled, from 1 byte, and filled with 0xFF (NaN in every float type) before it is handed out."""
    before = ops.buffer_pool_stats()
    torch.ops.rnnkit_fused.buffer_pool_debug(True, 1)
    yield
    torch.ops.rnnkit_fused.buffer_pool_debug(bool(before["poison"]), before["min_bytes"])  # RNNKIT_BUFFER_POOL_POISON=1 stays on


def _projection_inputs(rows=4096, inner=64, outputs=128):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, inner, generator=generator), torch.randn(outputs, inner, generator=generator), torch.randn(outputs, generator=generator)


def test_a_freed_buffer_is_handed_out_again():
    x, weight, bias = _projection_inputs()  # a 2 MiB output: pooled
    native = ops.native_loops()
    first = native.projection(x, weight, bias)
    address, before = first.data_ptr(), ops.buffer_pool_stats()
    torch.testing.assert_close(first, torch.addmm(bias, x, weight.t()), rtol=1e-5, atol=1e-4)
    del first
    freed = ops.buffer_pool_stats()
    assert freed["cached_bytes"] >= before["cached_bytes"] + 2 * MIB and freed["live_bytes"] == before["live_bytes"] - 2 * MIB
    second = native.projection(x, weight, bias)
    after = ops.buffer_pool_stats()
    assert second.data_ptr() == address and after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    torch.testing.assert_close(second, torch.addmm(bias, x, weight.t()), rtol=1e-5, atol=1e-4)


def test_a_block_much_larger_than_the_request_is_not_used():
    native = ops.native_loops()
    big = native.projection(*_projection_inputs(rows=8192))  # 4 MiB
    address = big.data_ptr()
    del big
    before = ops.buffer_pool_stats()
    small = native.projection(*_projection_inputs(rows=4096))  # 2 MiB: the 4 MiB block is more than 1/4 too large
    after = ops.buffer_pool_stats()
    assert small.data_ptr() != address
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"]
    assert after["cached_bytes"] == before["cached_bytes"] == 4 * MIB  # still kept for a request it fits
    again = native.projection(*_projection_inputs(rows=7000))
    assert again.data_ptr() == address


def test_a_resized_pooled_tensor_stays_correct_and_small_sizes_leave_the_pool():
    out = ops.native_loops().projection(*_projection_inputs())  # 2 MiB
    out.resize_(3000, 1000)  # 12 MB: a new pooled block, the 2 MiB one back in the cache
    out.fill_(1.5)
    assert out.sum().item() == 1.5 * 3_000_000
    before = ops.buffer_pool_stats()
    out.untyped_storage().resize_(64)  # through the pool's allocator, far below 1 MiB: malloc's
    after = ops.buffer_pool_stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    assert after["cached_bytes"] >= before["cached_bytes"] + 12_000_000 and after["live_bytes"] == before["live_bytes"] - 12_000_000
    assert torch.empty(0).set_(out.untyped_storage(), 0, (16,)).tolist() == [1.5] * 16


def test_deterministic_mode_gets_nan_filled_buffers_not_stale_ones():
    native = ops.native_loops()
    stale = native.projection(*_projection_inputs())
    stale.fill_(7.0)
    del stale
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        before = ops.buffer_pool_stats()
        fresh = ops.pooled_empty((4096, 128), torch.float32)
        assert ops.buffer_pool_stats()["hits"] == before["hits"]  # at::empty, which fills NaN, not the cached block
        assert fresh.isnan().all()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_a_bad_limit_in_the_environment_is_an_error():
    import subprocess
    import sys

    code = "import torch, rnnkit; rnnkit.ops.load(); torch.ops.rnnkit_fused.pooled_empty([1 << 20], torch.float32)"
    result = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "RNNKIT_BUFFER_POOL_MB": "lots"},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "RNNKIT_BUFFER_POOL_MB must be a whole number of MiB" in result.stderr


def test_fake_tensors_trace_the_autocast_engine():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = rnnkit.LSTM(8, 16)
    with FakeTensorMode(allow_non_fake_inputs=True), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = layer(torch.randn(5000, 2, 8))  # a 1.25 MiB projection: the pooled size
    assert y.shape == (5000, 2, 16) and h.shape == (1, 2, 16)


def test_the_limit_bounds_what_the_pool_keeps():
    native = ops.native_loops()
    limit = ops.buffer_pool_limit()
    try:
        assert ops.buffer_pool_limit(0) == 0
        assert ops.buffer_pool_stats()["cached_bytes"] == 0
        out = native.projection(*_projection_inputs())
        del out
        assert ops.buffer_pool_stats()["cached_bytes"] == 0 and ops.buffer_pool_stats()["cached_blocks"] == 0
        ops.buffer_pool_limit(3 * MIB)
        kept = [native.projection(*_projection_inputs()) for _ in range(3)]
        del kept
        assert 0 < ops.buffer_pool_stats()["cached_bytes"] <= 3 * MIB
    finally:
        ops.buffer_pool_limit(limit)
    assert ops.buffer_pool_limit() == limit


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_a_bad_limit_is_refused(bad):
    with pytest.raises(ValueError, match="limit_bytes must be an int >= 0"):
        ops.buffer_pool_limit(bad)


def test_the_profiler_counts_pooled_tensors():
    x, weight, bias = _projection_inputs()
    native = ops.native_loops()
    warm = native.projection(x, weight, bias)  # the next call reuses this block: the profiler must see it all the same
    del warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = native.projection(x, weight, bias)
        del out
    sizes = [event.nbytes() for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    assert 2 * MIB in sizes and -2 * MIB in sizes


def test_threads_share_the_pool_safely():
    layer = rnnkit.GRU(64, 128)
    inputs = [torch.randn(64, 32, 64, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]  # 3 MiB gate buffers

    def train(x):
        x = x.clone().requires_grad_()
        y, h = layer(x)
        grads = torch.autograd.grad((y * y).sum() + h.sum(), (x, *layer.parameters()))
        return y.detach(), grads

    serial = [train(x) for x in inputs]
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, [train(inputs[i]) for _ in range(3)])) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (y, grads) in enumerate(serial):
        for y_again, grads_again in results[i]:  # MKL may thread differently under concurrent calls: close, not equal
            torch.testing.assert_close(y_again, y, rtol=1e-5, atol=1e-6)
            for a, b in zip(grads_again, grads, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


FAMILIES = [
    ("RNN", {}), ("RNN", {"nonlinearity": "relu", "bidirectional": True}), ("LSTM", {"num_layers": 2}), ("LSTM", {"proj_size": 3}),
    ("GRU", {"bidirectional": True}), ("LSTM", {"layer_norm": True}), ("GRU", {"layer_norm": True}), ("MinGRU", {}), ("MinLSTM", {}),
    ("RGLRU", {}), ("GRU", {"zoneout": 0.3, "output_dropout": 0.2}), ("LSTM", {"zoneout": 0.3, "output_dropout": 0.2, "weight_drop": 0.2}),
]  # fmt: skip


CASES = [(f, o, padded) for f, o in FAMILIES for padded in (False, True) if not padded or f in ("RNN", "LSTM", "GRU")]  # the scans take no packing


@pytest.mark.parametrize("family, options, padded", CASES, ids=[f"{f}-{'-'.join(o) or 'plain'}-{'padded' if p else 'unpadded'}" for f, o, p in CASES])
def test_kernels_write_every_element_of_a_poisoned_buffer(poisoned, family, options, padded):
    """Unpadded single-direction training returns the output as the state history itself; padded runs write y apart."""
    torch.manual_seed(0)
    fused = getattr(rnnkit, family)(5, 6, **options)
    reference = getattr(rnnkit, family)(5, 6, engine="reference", **options)
    reference.load_state_dict(fused.state_dict())
    lengths = torch.tensor([7, 4, 7])
    x = torch.randn(7, 3, 5)
    outputs = []
    for layer in (fused, reference):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # the regularisers' masks: the same for both engines
        y, _ = layer(torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False) if padded else xi)
        y = torch.nn.utils.rnn.pad_packed_sequence(y)[0] if padded else y
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        layer.eval()
        with torch.no_grad():
            inferred = layer(x)[0]
        outputs.append((y.detach(), xi.grad, [p.grad for p in layer.parameters()], inferred))
    (y_f, dx_f, dp_f, inf_f), (y_r, dx_r, dp_r, inf_r) = outputs
    assert not y_f.isnan().any() and not dx_f.isnan().any() and not inf_f.isnan().any()
    torch.testing.assert_close(y_f, y_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(inf_f, inf_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dx_f, dx_r, rtol=1e-4, atol=1e-5)
    for a, b in zip(dp_f, dp_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_int8_and_bf16_kernels_write_every_element_of_a_poisoned_buffer(poisoned):
    torch.manual_seed(0)
    model = torch.nn.Sequential(rnnkit.LSTM(8, 16))
    x = torch.randn(6, 3, 8)
    with torch.no_grad():
        expected = model(x)[0]
        quantized = rnnkit.quantize_dynamic(model)(x)[0]
    assert not quantized.isnan().any()
    torch.testing.assert_close(quantized, expected, rtol=0, atol=0.05)
    layer = rnnkit.GRU(8, 16)
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(xi)
    y.float().sum().backward()
    assert not y.isnan().any() and not xi.grad.isnan().any() and not any(p.grad.isnan().any() for p in layer.parameters())
    reference = rnnkit.GRU(8, 16, engine="reference")
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y.float(), reference(x)[0], rtol=0, atol=0.05)


def test_torch_compile_keeps_the_pooled_projection(monkeypatch):
    """Under torch.compile with static shapes the input projection stays rnnkit's pooled op (its fake kernel traces it),
    with eager's results and gradients."""
    from rnnkit.engine import gemm

    monkeypatch.setattr(gemm, "POOLED_MIN_BYTES", 1)  # every projection pooled, at test sizes
    traced = []
    projection = ops.NativeLoops.projection
    monkeypatch.setattr(ops.NativeLoops, "projection", lambda self, *a: traced.append(type(a[0]).__name__) or projection(self, *a))
    torch.manual_seed(0)
    layer = rnnkit.GRU(5, 6)
    x = torch.randn(7, 3, 5)

    def run(module):
        xi = x.clone().requires_grad_()
        y, h = module(xi)
        (y.sum() + h.sum()).backward()
        grads = [xi.grad, *(p.grad.clone() for p in layer.parameters())]
        layer.zero_grad(set_to_none=True)
        return y.detach(), grads

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    eager_y, eager_grads = run(layer)
    assert traced and set(traced) == {"Tensor"}
    for backend in (aot_autograd(fw_compiler=keep, bw_compiler=keep), "inductor"):
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # inductor's own use of torch.jit
            compiled_y, compiled_grads = run(torch.compile(layer, backend=backend, fullgraph=True))
        torch.testing.assert_close(compiled_y, eager_y, rtol=1e-5, atol=1e-6)
        for a, b in zip(compiled_grads, eager_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "rnnkit_fused.projection" in graphs[0]  # the forward graph holds the op: its fake kernel traced it
