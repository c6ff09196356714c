"""The Triton linear scan through Triton's interpreter on CPU, against the readable loop.

Runs in its own process with ``TRITON_INTERPRET=1`` (tests/test_triton_interpreter.py starts it).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the triton extra is not installed")

from rnnkit.ops.triton import scan  # noqa: E402
from tests.helpers import assert_close  # noqa: E402


def loop(a, b, h0, reverse):
    h, out = h0, []
    for t in reversed(range(a.shape[0])) if reverse else range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out[::-1] if reverse else out)


def inputs(dtype, steps=11, batch=3, hidden=7, requires_grad=True):
    a = torch.rand(steps, batch, hidden, dtype=dtype, requires_grad=requires_grad)
    b = torch.randn(steps, batch, hidden, dtype=dtype, requires_grad=requires_grad)
    h0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=requires_grad)
    return a, b, h0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunk", [0, 3, 4])  # 0: one chunk at this size; 3 and 4: chunks with a short last one
def test_scan_and_gradients_match_the_loop(dtype, reverse, chunk):
    a, b, h0 = inputs(dtype)
    h = scan.linear_scan(a, b, h0, reverse, chunk=chunk)
    expected = loop(a, b, h0, reverse)
    assert_close(h, expected, dtype, "h")
    g = torch.randn_like(h)
    grads = torch.autograd.grad(h, (a, b, h0), g)
    for name, got, want in zip(("a", "b", "h0"), grads, torch.autograd.grad(expected, (a, b, h0), g)):
        assert_close(got, want, dtype, f"d{name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_double_backward_matches_the_loop(reverse):
    a, b, h0 = inputs(torch.float64, steps=5, batch=2, hidden=3)
    g = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for scan_fn in (lambda *t: scan.linear_scan(*t, reverse, chunk=2), lambda *t: loop(*t, reverse)):
        first = torch.autograd.grad((scan_fn(a, b, h0) * g).sum(), (a, b, h0), create_graph=True)
        results.append(torch.autograd.grad(sum((d * d).sum() for d in first), (a, b, h0)))
    for name, got, want in zip(("a", "b", "h0"), *results):
        assert_close(got, want, torch.float64, f"second derivative by {name}")


def test_opcheck_schema_fake_and_autograd_registration():
    a, b, h0 = inputs(torch.float32, steps=6, batch=2, hidden=5)
    torch.library.opcheck(
        torch.ops.rnnkit_fused.triton_linear_scan, (a, b, h0, False, 4),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )  # fmt: skip


def test_empty_sequence():
    a, b, h0 = inputs(torch.float32, steps=0)
    h = scan.linear_scan(a, b, h0)
    assert h.shape == (0, 3, 7)
    (dh0,) = torch.autograd.grad(h.sum() + h0.sum(), (h0,))
    assert torch.equal(dh0, torch.ones_like(h0))


def test_chunking_follows_the_parallelism_that_features_leave():
    assert scan.chunk_length(4096, 256 * 1024) == 4096  # 2048 feature blocks: one chunk
    chunk = scan.chunk_length(4096, 8 * 64)  # 4 feature blocks: many chunks, none shorter than MIN_CHUNK
    assert scan.MIN_CHUNK <= chunk < 4096
    assert scan.chunk_length(5, 1) == 5


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        scan.linear_scan(*inputs(torch.float32, requires_grad=False))


def test_bad_arguments_are_named():
    a, b, h0 = inputs(torch.float32, requires_grad=False)
    with pytest.raises(ValueError, match="h0: expected shape"):
        scan.linear_scan(a, b, h0[:, :5])
    with pytest.raises(ValueError, match="b: expected dtype torch.float32"):
        scan.linear_scan(a, b.double(), h0)
    with pytest.raises(ValueError, match="a: expected a float32 or float64"):
        scan.linear_scan(a.half(), b.half(), h0.half())
    with pytest.raises(ValueError, match="chunk: expected a non-negative int"):
        scan.linear_scan(a, b, h0, chunk=-7)
