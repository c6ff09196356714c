"""Triton kernels of one LayerNorm LSTM or GRU step: normalisation and gate math, forward and backward.

One program per batch row: a LayerNorm's statistics are sums over the row's G*H gate values, so
a row never leaves its program. The recurrent GEMM ``a = h_{t-1} W_hh^T`` (forward) and
``dh_{t-1} += da W_hh`` (backward) stay with cuBLAS, between the launches. Math and names:
:mod:`rnnkit.engine.fused_layer_norm` (LSTM) and :mod:`rnnkit.engine.fused_layer_norm_gru` (GRU).
Legend: ``u`` the hidden units of a row (BLOCK >= H, masked), gates at offsets k*H + u.

Padded rows (``valid`` False) keep the state, output zeros and write zeros to every saved
buffer, as the C++ kernels do; backward, their dh and dc pass through.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _load4(ptr, wide, H, inside):
    """A row's four gate blocks (offsets 0, H, 2H, 3H), zero past H."""
    return (
        tl.load(ptr + wide, mask=inside, other=0.0), tl.load(ptr + wide + H, mask=inside, other=0.0),
        tl.load(ptr + wide + 2 * H, mask=inside, other=0.0), tl.load(ptr + wide + 3 * H, mask=inside, other=0.0),
    )  # fmt: skip


@triton.jit
def _store_kept(ptr, wide, H, inside, keep, blocks: tl.constexpr, b0, b1, b2, b3):
    """Store the first ``blocks`` gate blocks of a row where it is kept, zeros where it is padding."""
    tl.store(ptr + wide, tl.where(keep, b0, 0.0), mask=inside)
    tl.store(ptr + wide + H, tl.where(keep, b1, 0.0), mask=inside)
    tl.store(ptr + wide + 2 * H, tl.where(keep, b2, 0.0), mask=inside)
    if blocks == 4:
        tl.store(ptr + wide + 3 * H, tl.where(keep, b3, 0.0), mask=inside)


@triton.jit
def _normalize4(a0, a1, a2, a3, size, eps, inside, inside_last):
    """LayerNorm over four masked blocks (the GRU's three: ``inside_last`` all False): the normalised blocks and
    1/sqrt(var + eps). Two passes, the deviations before their squares, for float32's sake."""
    mean = (tl.sum(a0) + tl.sum(a1) + tl.sum(a2) + tl.sum(a3)) / size
    d0, d1 = tl.where(inside, a0 - mean, 0.0), tl.where(inside, a1 - mean, 0.0)
    d2, d3 = tl.where(inside, a2 - mean, 0.0), tl.where(inside_last, a3 - mean, 0.0)
    rstd = 1.0 / tl.sqrt((tl.sum(d0 * d0) + tl.sum(d1 * d1) + tl.sum(d2 * d2) + tl.sum(d3 * d3)) / size + eps)
    return d0 * rstd, d1 * rstd, d2 * rstd, d3 * rstd, rstd


@triton.jit
def lstm_forward_step(
    gates_ptr, a_ptr, h_prev_ptr, c_prev_ptr, h_ptr, c_ptr, y_ptr, ahat_ptr, chat_ptr, rstd_ptr, valid_ptr,
    gain_hh_ptr, gain_cell_ptr, bias_cell_ptr, zoneout_ptr, H, eps,
    HAS_VALID: tl.constexpr, HAS_ZONEOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    """gates: in xp_t = LN(W_ih x)γ_ih + b_ih + b_hh, out [i f g o]; rstd: (N, 2), for a and for c.
    zoneout: (N, 2H) [m_h m_c], 1 where a unit keeps its previous state: h_t = m_h h_{t-1} + (1-m_h) h_new, c likewise."""
    n = tl.program_id(0)
    u = tl.arange(0, BLOCK)
    inside = u < H
    wide, row = n * 4 * H + u, n * H + u
    a0, a1, a2, a3 = _load4(a_ptr, wide, H, inside)
    ah0, ah1, ah2, ah3, rstd_a = _normalize4(a0, a1, a2, a3, 4 * H, eps, inside, inside)
    x0, x1, x2, x3 = _load4(gates_ptr, wide, H, inside)
    g0, g1, g2, g3 = _load4(gain_hh_ptr, u, H, inside)
    i, f, g, o = _sigmoid(x0 + ah0 * g0), _sigmoid(x1 + ah1 * g1), _tanh(x2 + ah2 * g2), _sigmoid(x3 + ah3 * g3)
    c_prev = tl.load(c_prev_ptr + row, mask=inside, other=0.0)
    c = tl.where(inside, f * c_prev + i * g, 0.0)
    c_mean = tl.sum(c) / H
    c_dev = tl.where(inside, c - c_mean, 0.0)
    rstd_c = 1.0 / tl.sqrt(tl.sum(c_dev * c_dev) / H + eps)
    chat = c_dev * rstd_c
    h = o * _tanh(chat * tl.load(gain_cell_ptr + u, mask=inside, other=0.0) + tl.load(bias_cell_ptr + u, mask=inside, other=0.0))
    h_prev = tl.load(h_prev_ptr + row, mask=inside, other=0.0)
    if HAS_ZONEOUT:
        m_h = tl.load(zoneout_ptr + 2 * n * H + u, mask=inside, other=0.0)
        m_c = tl.load(zoneout_ptr + 2 * n * H + H + u, mask=inside, other=0.0)
        h = m_h * h_prev + (1.0 - m_h) * h
        c = m_c * c_prev + (1.0 - m_c) * c
    keep = True
    if HAS_VALID:
        keep = tl.load(valid_ptr + n) != 0
    zero = 0.0
    _store_kept(gates_ptr, wide, H, inside, keep, 4, i, f, g, o)
    _store_kept(ahat_ptr, wide, H, inside, keep, 4, ah0, ah1, ah2, ah3)
    tl.store(chat_ptr + row, tl.where(keep, chat, zero), mask=inside)
    tl.store(rstd_ptr + 2 * n, tl.where(keep, rstd_a, zero))
    tl.store(rstd_ptr + 2 * n + 1, tl.where(keep, rstd_c, zero))
    tl.store(c_ptr + row, tl.where(keep, c, c_prev), mask=inside)
    tl.store(h_ptr + row, tl.where(keep, h, h_prev), mask=inside)
    if HAS_VALID:
        tl.store(y_ptr + row, tl.where(keep, h, zero), mask=inside)


@triton.jit
def _normalize4_backward(d0, d1, d2, d3, x0, x1, x2, x3, rstd, size):
    """LayerNorm's input gradient ``rstd ⊙ (dx̂ - mean(dx̂) - x̂ ⊙ mean(dx̂ ⊙ x̂))`` over four blocks."""
    m1 = (tl.sum(d0) + tl.sum(d1) + tl.sum(d2) + tl.sum(d3)) / size
    m2 = (tl.sum(d0 * x0) + tl.sum(d1 * x1) + tl.sum(d2 * x2) + tl.sum(d3 * x3)) / size
    return rstd * (d0 - m1 - x0 * m2), rstd * (d1 - m1 - x1 * m2), rstd * (d2 - m1 - x2 * m2), rstd * (d3 - m1 - x3 * m2)


@triton.jit
def lstm_backward_step(
    gates_ptr, c_prev_ptr, ahat_ptr, chat_ptr, rstd_ptr, dy_ptr, valid_ptr, gain_hh_ptr, gain_cell_ptr, bias_cell_ptr,
    dh_ptr, dc_ptr, dgx_ptr, da_ptr, dn_ptr, zoneout_ptr, H, HAS_VALID: tl.constexpr, HAS_ZONEOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    """dh, dc: in the gradients reaching h_t, c_t, out (valid rows) the parts of dh_{t-1}, dc_{t-1} that skip W_hh
    (0 and dc ⊙ f, plus m ⊙ dh_t, m ⊙ dc_t under zoneout); dn: the gradient of LN(c)γ_c+β_c."""
    n = tl.program_id(0)
    u = tl.arange(0, BLOCK)
    inside = u < H
    wide, row = n * 4 * H + u, n * H + u
    dh_in = tl.load(dh_ptr + row, mask=inside, other=0.0)
    dc_in = tl.load(dc_ptr + row, mask=inside, other=0.0)
    dh_total = dh_in + tl.load(dy_ptr + row, mask=inside, other=0.0)
    dh, dc_new = dh_total, dc_in  # the gradients of the step's new h and c, before zoneout mixes in the old ones
    if HAS_ZONEOUT:
        m_h = tl.load(zoneout_ptr + 2 * n * H + u, mask=inside, other=0.0)
        m_c = tl.load(zoneout_ptr + 2 * n * H + H + u, mask=inside, other=0.0)
        dh, dc_new = (1.0 - m_h) * dh_total, (1.0 - m_c) * dc_in
    i, f, g, o = _load4(gates_ptr, wide, H, inside)
    chat = tl.load(chat_ptr + row, mask=inside, other=0.0)
    gain_cell = tl.load(gain_cell_ptr + u, mask=inside, other=0.0)
    tc = _tanh(chat * gain_cell + tl.load(bias_cell_ptr + u, mask=inside, other=0.0))
    d_normed = tl.where(inside, dh * o * (1.0 - tc * tc), 0.0)
    d_o = dh * tc * o * (1.0 - o)
    dchat = d_normed * gain_cell
    rstd_c = tl.load(rstd_ptr + 2 * n + 1)
    m1 = tl.sum(dchat) / H
    m2 = tl.sum(dchat * chat) / H
    d_c = dc_new + rstd_c * (dchat - m1 - chat * m2)
    c_prev = tl.load(c_prev_ptr + row, mask=inside, other=0.0)
    d_i = d_c * g * i * (1.0 - i)
    d_f = d_c * c_prev * f * (1.0 - f)
    d_g = d_c * i * (1.0 - g * g)
    g0, g1, g2, g3 = _load4(gain_hh_ptr, u, H, inside)
    ah0, ah1, ah2, ah3 = _load4(ahat_ptr, wide, H, inside)
    da0, da1, da2, da3 = _normalize4_backward(d_i * g0, d_f * g1, d_g * g2, d_o * g3, ah0, ah1, ah2, ah3, tl.load(rstd_ptr + 2 * n), 4 * H)
    keep = True
    if HAS_VALID:
        keep = tl.load(valid_ptr + n) != 0
    zero = 0.0
    _store_kept(dgx_ptr, wide, H, inside, keep, 4, d_i, d_f, d_g, d_o)
    _store_kept(da_ptr, wide, H, inside, keep, 4, da0, da1, da2, da3)
    tl.store(dn_ptr + row, tl.where(keep, d_normed, zero), mask=inside)
    dc_skip, dh_skip = d_c * f, dh_total * 0.0
    if HAS_ZONEOUT:
        dc_skip, dh_skip = dc_skip + m_c * dc_in, m_h * dh_total
    tl.store(dc_ptr + row, tl.where(keep, dc_skip, dc_in), mask=inside)
    tl.store(dh_ptr + row, tl.where(keep, dh_skip, dh_in), mask=inside)


@triton.jit
def gru_forward_step(
    gates_ptr, a_ptr, h_prev_ptr, h_ptr, y_ptr, ahat_ptr, hn_ptr, rstd_ptr, valid_ptr, gain_hh_ptr, b_hh_ptr, zoneout_ptr,
    H, eps, HAS_VALID: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZONEOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    """gates: in xp_t = LN(W_ih x)γ_ih + b_ih, out [r z n]; hn: LN(a)_n γ_hh,n + b_hh,n, read by δr; rstd: (N,).
    zoneout: (N, H) m, 1 where a unit keeps its previous state: h_t = m h_{t-1} + (1-m) h_new."""
    n = tl.program_id(0)
    u = tl.arange(0, BLOCK)
    inside = u < H
    wide, row = n * 3 * H + u, n * H + u
    a0 = tl.load(a_ptr + wide, mask=inside, other=0.0)
    a1 = tl.load(a_ptr + wide + H, mask=inside, other=0.0)
    a2 = tl.load(a_ptr + wide + 2 * H, mask=inside, other=0.0)
    ah0, ah1, ah2, _, rstd = _normalize4(a0, a1, a2, a2 * 0.0, 3 * H, eps, inside, u < 0)
    hr = ah0 * tl.load(gain_hh_ptr + u, mask=inside, other=0.0)
    hz = ah1 * tl.load(gain_hh_ptr + u + H, mask=inside, other=0.0)
    hn = ah2 * tl.load(gain_hh_ptr + u + 2 * H, mask=inside, other=0.0)
    if HAS_BIAS:
        hr += tl.load(b_hh_ptr + u, mask=inside, other=0.0)
        hz += tl.load(b_hh_ptr + u + H, mask=inside, other=0.0)
        hn += tl.load(b_hh_ptr + u + 2 * H, mask=inside, other=0.0)
    r = _sigmoid(tl.load(gates_ptr + wide, mask=inside, other=0.0) + hr)
    z = _sigmoid(tl.load(gates_ptr + wide + H, mask=inside, other=0.0) + hz)
    new = _tanh(tl.load(gates_ptr + wide + 2 * H, mask=inside, other=0.0) + r * hn)
    h_prev = tl.load(h_prev_ptr + row, mask=inside, other=0.0)
    h = new + z * (h_prev - new)
    if HAS_ZONEOUT:
        m = tl.load(zoneout_ptr + row, mask=inside, other=0.0)
        h = m * h_prev + (1.0 - m) * h
    keep = True
    if HAS_VALID:
        keep = tl.load(valid_ptr + n) != 0
    zero = 0.0
    _store_kept(gates_ptr, wide, H, inside, keep, 3, r, z, new, new)
    _store_kept(ahat_ptr, wide, H, inside, keep, 3, ah0, ah1, ah2, ah2)
    tl.store(hn_ptr + row, tl.where(keep, hn, zero), mask=inside)
    tl.store(rstd_ptr + n, tl.where(keep, rstd, zero))
    tl.store(h_ptr + row, tl.where(keep, h, h_prev), mask=inside)
    if HAS_VALID:
        tl.store(y_ptr + row, tl.where(keep, h, zero), mask=inside)


@triton.jit
def gru_backward_step(
    gates_ptr, h_prev_ptr, ahat_ptr, hn_ptr, rstd_ptr, dy_ptr, valid_ptr, gain_hh_ptr,
    dh_ptr, dgx_ptr, dgh_ptr, da_ptr, zoneout_ptr, H, HAS_VALID: tl.constexpr, HAS_ZONEOUT: tl.constexpr, BLOCK: tl.constexpr,
):
    """dh: in the gradient reaching h_t, out (valid rows) its part that skips W_hh, dh_t ⊙ z (plus m ⊙ dh_t under
    zoneout, with dh_t then (1-m) ⊙ dh_t inside the cell); dgh: [δr δz δn⊙r]."""
    n = tl.program_id(0)
    u = tl.arange(0, BLOCK)
    inside = u < H
    wide, row = n * 3 * H + u, n * H + u
    dh_in = tl.load(dh_ptr + row, mask=inside, other=0.0)
    dh_total = dh_in + tl.load(dy_ptr + row, mask=inside, other=0.0)
    dh = dh_total
    if HAS_ZONEOUT:
        m = tl.load(zoneout_ptr + row, mask=inside, other=0.0)
        dh = (1.0 - m) * dh_total
    r = tl.load(gates_ptr + wide, mask=inside, other=0.0)
    z = tl.load(gates_ptr + wide + H, mask=inside, other=0.0)
    new = tl.load(gates_ptr + wide + 2 * H, mask=inside, other=0.0)
    h_prev = tl.load(h_prev_ptr + row, mask=inside, other=0.0)
    d_n = dh * (1.0 - z) * (1.0 - new * new)
    d_z = dh * (h_prev - new) * z * (1.0 - z)
    d_r = d_n * tl.load(hn_ptr + row, mask=inside, other=0.0) * r * (1.0 - r)
    d_hn = d_n * r
    da0, da1, da2, _ = _normalize4_backward(
        d_r * tl.load(gain_hh_ptr + u, mask=inside, other=0.0), d_z * tl.load(gain_hh_ptr + u + H, mask=inside, other=0.0),
        d_hn * tl.load(gain_hh_ptr + u + 2 * H, mask=inside, other=0.0), d_hn * 0.0,
        tl.load(ahat_ptr + wide, mask=inside, other=0.0), tl.load(ahat_ptr + wide + H, mask=inside, other=0.0),
        tl.load(ahat_ptr + wide + 2 * H, mask=inside, other=0.0), d_hn * 0.0, tl.load(rstd_ptr + n), 3 * H,
    )  # fmt: skip
    keep = True
    if HAS_VALID:
        keep = tl.load(valid_ptr + n) != 0
    _store_kept(dgx_ptr, wide, H, inside, keep, 3, d_r, d_z, d_n, d_n)
    _store_kept(dgh_ptr, wide, H, inside, keep, 3, d_r, d_z, d_hn, d_hn)
    _store_kept(da_ptr, wide, H, inside, keep, 3, da0, da1, da2, da2)
    dh_skip = dh * z
    if HAS_ZONEOUT:
        dh_skip += m * dh_total
    tl.store(dh_ptr + row, tl.where(keep, dh_skip, dh_in), mask=inside)
