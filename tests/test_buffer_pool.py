"""The kernels' buffer pool (csrc/buffer_pool.h): reuse, its limit, the profiler's view, threads, and poisoned buffers.

A pooled buffer is not fresh zeroed memory: a kernel that read an element of its output before writing it
would pass on fresh pages and fail here, where every buffer handed out is filled with NaN bytes first.
"""

from __future__ import annotations

import threading

import pytest
import torch

import rnnkit
from rnnkit import ops

pytestmark = pytest.mark.skipif(ops.native_loops() is None, reason="the compiled library did not build")

MIB = 1 << 20


@pytest.fixture(autouse=True)
def emptied_pool():
    """Start from an empty cache, so that which block serves a request does not depend on earlier tests."""
    limit = ops.buffer_pool_limit()
    ops.buffer_pool_limit(0)
    ops.buffer_pool_limit(limit)


@pytest.fixture
def poisoned():
    """Every request pooled, from 1 byte, and filled with 0xFF (NaN in every float type) before it is handed out."""
    torch.ops.rnnkit_fused.buffer_pool_debug(True, 1)
    yield
    torch.ops.rnnkit_fused.buffer_pool_debug(False, MIB)


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
    small = native.projection(*_projection_inputs(rows=4096))  # 2 MiB: the 4 MiB block is more than 1/4 too large
    assert small.data_ptr() != address


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
    ("RGLRU", {}),
]  # fmt: skip


@pytest.mark.parametrize("family, options", FAMILIES, ids=[f"{f}-{'-'.join(o) or 'plain'}" for f, o in FAMILIES])
def test_kernels_write_every_element_of_a_poisoned_buffer(poisoned, family, options):
    torch.manual_seed(0)
    fused = getattr(rnnkit, family)(5, 6, **options)
    reference = getattr(rnnkit, family)(5, 6, engine="reference", **options)
    reference.load_state_dict(fused.state_dict())
    lengths = torch.tensor([7, 4, 7])
    x = torch.randn(7, 3, 5)
    for layer in (fused, reference):
        layer.zero_grad(set_to_none=True)
    outputs = []
    for layer in (fused, reference):
        xi = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False)
        y, _ = layer(packed) if family in ("RNN", "LSTM", "GRU") else layer(xi)
        y = torch.nn.utils.rnn.pad_packed_sequence(y)[0] if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
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
    assert ops.buffer_pool_stats()["hits"] + ops.buffer_pool_stats()["misses"] > 0


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

    eager_y, eager_grads = run(layer)
    assert traced and set(traced) == {"Tensor"}
    traced.clear()
    torch._dynamo.reset()
    compiled_y, compiled_grads = run(torch.compile(layer, backend="aot_eager", fullgraph=True))
    assert "FakeTensor" in traced or "FunctionalTensor" in traced  # traced through the op's fake kernel
    torch.testing.assert_close(compiled_y, eager_y, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
