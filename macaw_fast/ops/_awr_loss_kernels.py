"""Triton kernel of `awr_loss` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) (no overflow for any x)."""
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -r, r)


@triton.jit
def awr_loss_kernel(mu_ptr, act_ptr, adv_ptr, pred_ptr, hw_ptr, par_ptr, loss_ptr, w_ptr, N, A,
                    stride_mt, stride_mn, stride_ma, stride_at, stride_an, stride_aa,
                    stride_vt, stride_vn, stride_pt, stride_pn,
                    BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr, HEAD: tl.constexpr,
                    TANH: tl.constexpr = False):
    """Per-task advantage-weighted Gaussian log-likelihood loss (one program per task).

    Three passes over the task's N rows: mean of the advantages, their unbiased variance, then the
    weights w = exp(min((adv - mean) / (std * temp), log_max_w)), the log-probabilities and the
    weighted mean (plus the head's mean squared error when HEAD).

    Grid: (T,).

    Args:
        mu_ptr: policy means, shape (T, N, A). act_ptr: actions, shape (T, N, A).
        adv_ptr: advantages, shape (T, N). pred_ptr: predicted advantages, shape (T, N) (HEAD only).
        hw_ptr: head weight softplus(kappa), (1,) (HEAD only).
        par_ptr: constants (half_inv_var = 0.5 / sigma^2, log_norm = A (log sigma + log(2 pi) / 2),
            temp, log_max_w), contiguous (4,) in the kernel dtype.
        loss_ptr: output per-task losses, contiguous (T,).
        w_ptr: output weights, contiguous (T, N).
        N, A: rows per task and action dims.
        stride_mt, stride_mn, stride_ma: strides of mu along tasks, rows, action dims.
        stride_at, stride_an, stride_aa: strides of the actions along tasks, rows, action dims.
        stride_vt, stride_vn: strides of adv along tasks and rows.
        stride_pt, stride_pn: strides of pred along tasks and rows.
        BLOCK_N: rows per step. BLOCK_A: >= A (all action dims in one tile).
        HEAD: add softplus(kappa) * mean((pred - adv)^2).
        TANH: mu_ptr holds pre-activations x and the means are mu = tanh(x).
    """
    t = tl.program_id(0)
    half_inv_var = tl.load(par_ptr)
    log_norm = tl.load(par_ptr + 1)
    temp = tl.load(par_ptr + 2)
    log_max_w = tl.load(par_ptr + 3)
    dt = mu_ptr.dtype.element_ty
    s = tl.zeros((BLOCK_N,), dtype=dt)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        s += tl.load(adv_ptr + t * stride_vt + n * stride_vn, mask=n < N, other=0.0)
    mean = tl.sum(s, axis=0) / N
    s2 = tl.zeros((BLOCK_N,), dtype=dt)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        v = tl.load(adv_ptr + t * stride_vt + n * stride_vn, mask=n < N, other=0.0)
        dv = tl.where(n < N, v - mean, 0.0)
        s2 += dv * dv
    std = tl.sqrt(tl.sum(s2, axis=0) / (N - 1))
    scale = 1.0 / (std * temp)
    acc = tl.zeros((BLOCK_N,), dtype=dt)
    mse = tl.zeros((BLOCK_N,), dtype=dt)
    k = tl.arange(0, BLOCK_A)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < N
        v = tl.load(adv_ptr + t * stride_vt + n * stride_vn, mask=nm, other=0.0)
        w = tl.exp(tl.minimum((v - mean) * scale, log_max_w))
        m2 = nm[:, None] & (k[None, :] < A)
        mu = tl.load(mu_ptr + t * stride_mt + n[:, None] * stride_mn + k[None, :] * stride_ma, mask=m2, other=0.0)
        if TANH:
            mu = _tanh(mu)
        a = tl.load(act_ptr + t * stride_at + n[:, None] * stride_an + k[None, :] * stride_aa, mask=m2, other=0.0)
        d = a - mu
        logp = -half_inv_var * tl.sum(d * d, axis=1) - log_norm
        acc += tl.where(nm, -w * logp, 0.0)
        tl.store(w_ptr + t * N + n, w, mask=nm)
        if HEAD:
            pr = tl.load(pred_ptr + t * stride_pt + n * stride_pn, mask=nm, other=0.0)
            e = pr - v
            mse += e * e
    loss = tl.sum(acc, axis=0) / N
    if HEAD:
        loss += tl.load(hw_ptr) * (tl.sum(mse, axis=0) / N)
    tl.store(loss_ptr + t, loss)


@triton.jit
def awr_loss_bwd_kernel(g_ptr, mu_ptr, act_ptr, adv_ptr, pred_ptr, hw_ptr, w_ptr, par_ptr,
                        gmu_ptr, gact_ptr, gadv_ptr, gpred_ptr, ghw_ptr, N, A, stride_g,
                        stride_mt, stride_mn, stride_ma, stride_at, stride_an, stride_aa,
                        stride_vt, stride_vn, stride_pt, stride_pn,
                        BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr, HEAD: tl.constexpr,
                        TANH: tl.constexpr = False):
    """Gradients of the per-task losses given dL/dloss g (one program per task).

    dL/dmu = -(2 c / N) g_t w (a - mu) with c = 0.5 / sigma^2 (the weights w are constants);
    dL/da = -dL/dmu; with HEAD, e = pred - adv: dL/dpred = (2 / N) g_t hw e = -dL/dadv and the
    task's share of dL/dhw, g_t mean(e^2).

    Grid: (T,).

    Args:
        g_ptr: dL/dloss, (T,) with stride stride_g (0 when it is an expanded scalar).
        mu_ptr, act_ptr: policy means and actions, (T, N, A). adv_ptr, pred_ptr: (T, N) (pred: HEAD).
        hw_ptr: head weight (1,) (HEAD). w_ptr: the forward's weights, contiguous (T, N).
        par_ptr: the forward's constants (half_inv_var, log_norm, temp, log_max_w), (4,).
        gmu_ptr, gact_ptr: outputs, contiguous (T, N, A). gadv_ptr, gpred_ptr: outputs, contiguous
            (T, N) (HEAD). ghw_ptr: output per-task shares of dL/dhw, contiguous (T,) (HEAD).
        N, A: rows and action dims. stride_*: strides of mu, actions (tasks, rows, dims), adv, pred.
        BLOCK_N: rows per step. BLOCK_A: >= A. HEAD: the advantage-head term is present.
        TANH: mu_ptr holds pre-activations x, mu = tanh(x); gmu_ptr gets dL/dx = dL/dmu (1 - mu^2).
    """
    t = tl.program_id(0)
    g = tl.load(g_ptr + t * stride_g)
    half_inv_var = tl.load(par_ptr)
    scale = -2.0 * half_inv_var * g / N
    k = tl.arange(0, BLOCK_A)
    e2 = tl.zeros((BLOCK_N,), dtype=mu_ptr.dtype.element_ty)
    if HEAD:
        hw = tl.load(hw_ptr)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < N
        m2 = nm[:, None] & (k[None, :] < A)
        w = tl.load(w_ptr + t * N + n, mask=nm, other=0.0)
        mu = tl.load(mu_ptr + t * stride_mt + n[:, None] * stride_mn + k[None, :] * stride_ma, mask=m2, other=0.0)
        a = tl.load(act_ptr + t * stride_at + n[:, None] * stride_an + k[None, :] * stride_aa, mask=m2, other=0.0)
        if TANH:
            mu = _tanh(mu)
        gmu = (scale * w)[:, None] * (a - mu)
        off = (t * N + n[:, None]) * A + k[None, :]
        if TANH:
            tl.store(gmu_ptr + off, gmu * (1.0 - mu * mu), mask=m2)
        else:
            tl.store(gmu_ptr + off, gmu, mask=m2)
        tl.store(gact_ptr + off, -gmu, mask=m2)
        if HEAD:
            v = tl.load(adv_ptr + t * stride_vt + n * stride_vn, mask=nm, other=0.0)
            pr = tl.load(pred_ptr + t * stride_pt + n * stride_pn, mask=nm, other=0.0)
            e = pr - v
            gp = (2.0 * g * hw / N) * e
            tl.store(gpred_ptr + t * N + n, gp, mask=nm)
            tl.store(gadv_ptr + t * N + n, -gp, mask=nm)
            e2 += e * e
    if HEAD:
        tl.store(ghw_ptr + t, g * (tl.sum(e2, axis=0) / N))


@triton.jit
def awr_loss_dbwd_kernel(cmu_ptr, cact_ptr, cadv_ptr, cpred_ptr, chw_ptr, g_ptr, mu_ptr, act_ptr, adv_ptr,
                         pred_ptr, hw_ptr, w_ptr, par_ptr, gg_ptr, gmu_ptr, gact_ptr, gadv_ptr, gpred_ptr,
                         ghw_ptr, N, A, stride_g, stride_mt, stride_mn, stride_ma, stride_at, stride_an, stride_aa,
                         stride_vt, stride_vn, stride_pt, stride_pn,
                         BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr, HEAD: tl.constexpr,
                         HAS_CMU: tl.constexpr, HAS_CACT: tl.constexpr, HAS_CD: tl.constexpr,
                         HAS_CPRED: tl.constexpr, HAS_CADV: tl.constexpr, HAS_CE: tl.constexpr,
                         HAS_CHW: tl.constexpr, TANH: tl.constexpr = False):
    """Second-order backward of `awr_loss`: the VJP of `awr_loss_bwd_kernel` (one program per task).

    With k = -2 c / N (c = 0.5 / sigma^2), the first-order backward is dmu = k g_t w (a - mu) = -da
    and, with HEAD, e = pred - adv: dpred = (2 / N) g_t hw e = -dadv, dhw = sum_t g_t mean(e^2).
    Given cotangents Cmu, Ca (T, N, A), Cadv, Cpred (T, N), Chw (scalar) of those outputs, with
    Dc = Cmu - Ca and E = Cpred - Cadv, it writes
        d/dg_t  = k sum_n w_n sum_k (a - mu) Dc + (2 / N) hw sum_n e E + Chw mean_n(e^2)
        d/dmu   = -k g_t w Dc = -d/da
        d/dpred = (2 / N) g_t (hw E + Chw e) = -d/dadv
        d/dhw   = sum_t (2 / N) g_t sum_n e E   (this program's share, summed on the host).

    Grid: (T,).

    Args:
        cmu_ptr, cact_ptr: cotangents of dmu, da, contiguous (T, N, A) (read if HAS_CMU / HAS_CACT).
        cadv_ptr, cpred_ptr: cotangents of dadv, dpred, contiguous (T, N) (HAS_CADV / HAS_CPRED).
        chw_ptr: cotangent of dhw, (1,) (HAS_CHW).
        g_ptr: dL/dloss, (T,) with stride stride_g. mu_ptr, act_ptr: (T, N, A). adv_ptr, pred_ptr: (T, N).
        hw_ptr: head weight (1,) (HEAD). w_ptr: the forward's weights, contiguous (T, N).
        par_ptr: the forward's constants (half_inv_var, log_norm, temp, log_max_w), (4,).
        gg_ptr: output d/dg, contiguous (T,). gmu_ptr, gact_ptr: outputs (T, N, A) (HAS_CD).
        gadv_ptr, gpred_ptr: outputs (T, N) (HEAD). ghw_ptr: output per-task shares of d/dhw (T,) (HEAD).
        N, A: rows and action dims. stride_*: strides of mu, actions, adv, pred (as the forward's).
        BLOCK_N: rows per step. BLOCK_A: >= A. HEAD: the head term is present.
        HAS_CD = HAS_CMU or HAS_CACT; HAS_CE = HAS_CPRED or HAS_CADV.
        TANH: mu_ptr holds pre-activations x, mu = tanh(x), s = 1 - mu^2, and the first-order
            output dmu is dL/dx = k g w (a - mu) s: then Dc = Cmu s - Ca, d/da = k g w Dc and
            d/dx = s (-k g w Dc - 2 k g w mu (a - mu) Cmu).
    """
    t = tl.program_id(0)
    dt = mu_ptr.dtype.element_ty
    g = tl.load(g_ptr + t * stride_g)
    kk = -2.0 * tl.load(par_ptr) / N
    k = tl.arange(0, BLOCK_A)
    acc_g = tl.zeros((BLOCK_N,), dtype=dt)
    acc_hw = tl.zeros((BLOCK_N,), dtype=dt)
    if HEAD:
        hw = tl.load(hw_ptr)
    if HAS_CHW:
        chw = tl.load(chw_ptr)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < N
        if HAS_CD:
            m2 = nm[:, None] & (k[None, :] < A)
            off = (t * N + n[:, None]) * A + k[None, :]
            w = tl.load(w_ptr + t * N + n, mask=nm, other=0.0)
            mu = tl.load(mu_ptr + t * stride_mt + n[:, None] * stride_mn + k[None, :] * stride_ma, mask=m2, other=0.0)
            if TANH:
                mu = _tanh(mu)
                sd = 1.0 - mu * mu
            a = tl.load(act_ptr + t * stride_at + n[:, None] * stride_an + k[None, :] * stride_aa, mask=m2, other=0.0)
            dc = tl.zeros((BLOCK_N, BLOCK_A), dtype=dt)
            if HAS_CMU:
                cm = tl.load(cmu_ptr + off, mask=m2, other=0.0)
                if TANH:
                    dc += cm * sd
                else:
                    dc += cm
            if HAS_CACT:
                dc -= tl.load(cact_ptr + off, mask=m2, other=0.0)
            acc_g += kk * w * tl.sum((a - mu) * dc, axis=1)
            gm = (-kk * g * w)[:, None] * dc
            tl.store(gact_ptr + off, -gm, mask=m2)
            if TANH:
                if HAS_CMU:
                    gm += (-2.0 * kk * g * w)[:, None] * (mu * (a - mu) * cm)
                gm = gm * sd
            tl.store(gmu_ptr + off, gm, mask=m2)
        if HEAD:
            v = tl.load(adv_ptr + t * stride_vt + n * stride_vn, mask=nm, other=0.0)
            pr = tl.load(pred_ptr + t * stride_pt + n * stride_pn, mask=nm, other=0.0)
            e = pr - v
            de = tl.zeros((BLOCK_N,), dtype=dt)
            if HAS_CE:
                E = tl.zeros((BLOCK_N,), dtype=dt)
                if HAS_CPRED:
                    E += tl.load(cpred_ptr + t * N + n, mask=nm, other=0.0)
                if HAS_CADV:
                    E -= tl.load(cadv_ptr + t * N + n, mask=nm, other=0.0)
                acc_hw += e * E
                de += (2.0 * g * hw / N) * E
            if HAS_CHW:
                acc_g += (chw / N) * (e * e)
                de += (2.0 * chw * g / N) * e
            tl.store(gpred_ptr + t * N + n, de, mask=nm)
            tl.store(gadv_ptr + t * N + n, -de, mask=nm)
    gg = tl.sum(acc_g, axis=0)
    if HEAD:
        s_hw = tl.sum(acc_hw, axis=0)
        gg += (2.0 * hw / N) * s_hw
        tl.store(ghw_ptr + t, (2.0 * g / N) * s_hw)
    tl.store(gg_ptr + t, gg)
