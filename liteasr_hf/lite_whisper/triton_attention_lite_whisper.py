"""Triton forward kernel for the low-rank attention core: out = softmax(q k^T + key_bias) v.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only, and
import nothing from this file unguarded -- machines without triton (CPU, Mac) must still import it;
``HAS_TRITON`` says whether triton imported and ``INTERPRETED`` whether the kernel was built for
Triton's CPU interpreter; ``attention_lite_whisper.attention_core`` decides where the kernel runs (its
``kernel`` choice: "auto", "triton" or "reference") and falls back to the plain PyTorch reference elsewhere.

Operands (any strides; a stride of 0 over heads for shared operands is fine):
  q        [B, H,  Tq, Dqk]   softmax scale already folded in
  k        [B, Hk, Tk, Dqk]   Hk = 1 (rank space: B = X W_K1, shared by all heads) or H
  v        [B, Hv, Tk, Dv]    Hv = 1 (rank space: C = X W_V1) or H
  key_bias [B, H,  Tk]        optional per-key additive term (the b2 term); any float dtype
  out      [B, H,  Tq, Dv]    contiguous, q's dtype

Design (FlashAttention-2 forward): one program per (BLOCK_M query rows, batch*head); the q tile stays
in registers; the loop streams BLOCK_N keys at a time with an online softmax in base 2 (exp2, log2(e)
folded into the scores), fp32 running max / sum / accumulator, and p cast to v's dtype for the second
tensor-core product (as FlashAttention does). Full key blocks run unmasked; only the last, partial
block (Tk % BLOCK_N) pays for bounds masks.

Ranks that are not powers of two: ``tl.arange`` needs a power-of-two length. The score side splits
its feature axis into two power-of-two chunks, Dqk = D0 + D1, with D0 the largest power of two <= Dqk
and D1 the remainder rounded up to a power of two (>= 16), masked; D1 = 0 when Dqk is a power of two
(48 = 32 + 16, 80 = 64 + 16, 96 = 64 + 32), and s = q0 k0^T + q1 k1^T, so the padding wasted in the
QK MMAs stays under a third of Dqk instead of up to ~half (80 -> 128). Chunks are >= 16 wide: the
minimum K of an fp16/bf16 MMA. The value side is one tile of the next power of two, column-masked:
the encoder only gives it Dv = head_dim (64 in every Whisper) or a rank-space kv < head_dim (16, 32,
48 -> 64). A second value chunk (Dv = 48 as 32 + 16) was tried and faulted with an illegal address
on an H100 (triton 3.6) under most autotune configs, while one masked tile ran clean.

fp32 inputs use IEEE fp32 dot products unless ``torch.backends.cuda.matmul.allow_tf32`` is set, so
fp32 results match PyTorch's fp32 attention.
"""

import torch

try:  # guarded: CPU-only / Mac installs have no triton
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing or broken
    triton = None
    tl = None
    HAS_TRITON = False

LOG2E = 1.4426950408889634


def split_dim(d):
    """Split a feature size (a multiple of 16) into two power-of-two chunk widths (d0, d1); d1 may be 0."""
    if d <= 0 or d % 16:
        raise ValueError(f"attention_core kernel needs feature sizes that are positive multiples of 16, got {d}")
    d0 = 1 << (d.bit_length() - 1)
    rest = d - d0
    d1 = 0 if rest == 0 else max(16, 1 << (rest - 1).bit_length())
    return d0, d1


def value_tile(d):
    """The value side's one tile: the next power of two >= d (>= 16, the minimum N of an fp16/bf16 MMA), masked."""
    d0, d1 = split_dim(d)
    return d0 if d1 == 0 else 2 * d0


def supported(q, k, v, key_bias=None):
    """Whether the kernel can take these operands (else the caller uses the reference)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    B, H, _, dqk = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if k.shape[0] != B or v.shape[0] != B or k.shape[3] != dqk or k.shape[2] != v.shape[2]:
        return False
    if k.shape[1] not in (1, H) or v.shape[1] not in (1, H):
        return False
    if dqk % 16 or v.shape[3] % 16 or dqk == 0 or v.shape[3] == 0 or k.shape[2] == 0:
        return False
    if key_bias is not None and tuple(key_bias.shape) != (B, H, k.shape[2]):
        return False
    return True


if HAS_TRITON:

    @triton.jit
    def _mma(a, b, acc, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
        # UPCAST: triton's CPU interpreter (3.x) multiplies bf16 operands as their raw uint16 bits; a
        # bf16 x bf16 product is exact in fp32, so fp32 operands give the GPU's result (fp32 accumulate).
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc, input_precision=DOT_PREC)

    @triton.jit
    def _attn_inner(
        acc, l_i, m_i, q0, q1,
        k_base, v_base, b_base,
        stride_kt, stride_kd, stride_vt, stride_vd, stride_bt,
        start_n, TK,
        DQK: tl.constexpr, DV: tl.constexpr,
        DQK0: tl.constexpr, DQK1: tl.constexpr, DV_TILE: tl.constexpr,
        HAS_BIAS: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < TK
        dk0 = tl.arange(0, DQK0)
        # ---- scores s = q k^T (+ bias), in base 2 ----
        k_ptr = k_base + offs_n[:, None] * stride_kt + dk0[None, :] * stride_kd
        if MASKED:
            k0 = tl.load(k_ptr, mask=n_ok[:, None], other=0.0)
        else:
            k0 = tl.load(k_ptr)
        s = _mma(q0, tl.trans(k0), tl.zeros([q0.shape[0], BLOCK_N], dtype=tl.float32), DOT_PREC, UPCAST)
        if DQK1 > 0:
            dk1 = DQK0 + tl.arange(0, DQK1)
            k1_ptr = k_base + offs_n[:, None] * stride_kt + dk1[None, :] * stride_kd
            if MASKED:
                k1 = tl.load(k1_ptr, mask=n_ok[:, None] & (dk1[None, :] < DQK), other=0.0)
            else:
                k1 = tl.load(k1_ptr, mask=dk1[None, :] < DQK, other=0.0)
            s = _mma(q1, tl.trans(k1), s, DOT_PREC, UPCAST)
        s = s * 1.4426950408889634
        if HAS_BIAS:
            if MASKED:
                kb = tl.load(b_base + offs_n * stride_bt, mask=n_ok, other=0.0)
            else:
                kb = tl.load(b_base + offs_n * stride_bt)
            s = s + kb.to(tl.float32)[None, :] * 1.4426950408889634
        if MASKED:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        # ---- online softmax ----
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # ---- acc = acc * alpha + p v ----
        dv = tl.arange(0, DV_TILE)
        v_ptr = v_base + offs_n[:, None] * stride_vt + dv[None, :] * stride_vd
        if MASKED:
            v = tl.load(v_ptr, mask=n_ok[:, None] & (dv[None, :] < DV), other=0.0)
        elif DV_TILE > DV:
            v = tl.load(v_ptr, mask=dv[None, :] < DV, other=0.0)
        else:
            v = tl.load(v_ptr)
        acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC, UPCAST)
        return acc, l_i, m_new

    @triton.jit
    def _attn_fwd(
        Q, K, V, KB, O,
        stride_qb, stride_qh, stride_qt, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_vb, stride_vh, stride_vt, stride_vd,
        stride_bb, stride_bh, stride_bt,
        stride_ob, stride_oh, stride_ot, stride_od,
        H, TQ, TK,
        DQK: tl.constexpr, DV: tl.constexpr,
        DQK0: tl.constexpr, DQK1: tl.constexpr, DV_TILE: tl.constexpr,
        HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < TQ

        q_base = Q + b * stride_qb + h * stride_qh
        k_base = K + b * stride_kb + h * stride_kh  # stride_kh == 0 for a shared k
        v_base = V + b * stride_vb + h * stride_vh  # stride_vh == 0 for a shared v
        b_base = KB + b * stride_bb + h * stride_bh

        dq0 = tl.arange(0, DQK0)
        q0 = tl.load(q_base + offs_m[:, None] * stride_qt + dq0[None, :] * stride_qd, mask=m_ok[:, None], other=0.0)
        if DQK1 > 0:
            dq1 = DQK0 + tl.arange(0, DQK1)
            q1 = tl.load(
                q_base + offs_m[:, None] * stride_qt + dq1[None, :] * stride_qd,
                mask=m_ok[:, None] & (dq1[None, :] < DQK),
                other=0.0,
            )
        else:
            q1 = q0  # placeholder, never read
        acc = tl.zeros([BLOCK_M, DV_TILE], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

        n_full = (TK // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q0, q1, k_base, v_base, b_base,
                stride_kt, stride_kd, stride_vt, stride_vd, stride_bt, start_n, TK,
                DQK, DV, DQK0, DQK1, DV_TILE, HAS_BIAS, False, DOT_PREC, UPCAST, BLOCK_N,
            )
        if n_full < TK:
            acc, l_i, m_i = _attn_inner(
                acc, l_i, m_i, q0, q1, k_base, v_base, b_base,
                stride_kt, stride_kd, stride_vt, stride_vd, stride_bt, n_full, TK,
                DQK, DV, DQK0, DQK1, DV_TILE, HAS_BIAS, True, DOT_PREC, UPCAST, BLOCK_N,
            )

        inv_l = 1.0 / l_i
        o_base = O + b * stride_ob + h * stride_oh
        do = tl.arange(0, DV_TILE)
        tl.store(
            o_base + offs_m[:, None] * stride_ot + do[None, :] * stride_od,
            (acc * inv_l[:, None]).to(O.dtype.element_ty),
            mask=m_ok[:, None] & (do[None, :] < DV),
        )

    def _prune_configs(configs, named_args, **kwargs):
        """Keep the fp32 accumulator within the register file: wide Dv needs a short tile or 8 warps."""
        dv = kwargs.get("DV_TILE", named_args.get("DV_TILE", 64))
        tq = named_args.get("TQ", kwargs.get("TQ", 1 << 30))
        kept = []
        for c in configs:
            bm = c.kwargs["BLOCK_M"]
            # accumulator floats per thread = BLOCK_M * DV / (32 * warps); keep it <= 128 registers
            if bm * dv / (32 * c.num_warps) > 128:
                continue
            if bm > 64 and tq <= 64:
                continue
            kept.append(c)
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]

    # A small space: FA2-style tiles for Hopper/Ampere. The cache key is the feature sizes, the bias
    # flag, the lengths and (added by triton) the dtypes -- not the batch, so an encoder tunes once per
    # distinct layer rank. Tuning benchmarks the kernel (it synchronizes): warm up before CUDA-graph capture.
    _CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),  # small ranks: fewer rescales
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),  # wide Dv (rank-space v 304)
    ]
    _attn_fwd_tuned = triton.autotune(
        configs=_CONFIGS,
        key=["DQK", "DV", "HAS_BIAS", "TQ", "TK"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )(_attn_fwd)


# Whether the kernel was built for Triton's CPU interpreter: @triton.jit reads TRITON_INTERPRET when it decorates, and
# builds an InterpretedFunction (CPU tensors only) under TRITON_INTERPRET=1, else a JITFunction (GPU). A fact about the
# kernel object, fixed from then on, not a reading of the variable. The class name, not an import of it: the
# interpreter's module path moved between triton releases.
INTERPRETED = HAS_TRITON and type(_attn_fwd).__name__ == "InterpretedFunction"


def attention_core_triton(q, k, v, key_bias=None):
    """Launch the kernel (no dispatch logic: the caller checked ``supported``). Returns [B, H, Tq, Dv]."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    B, H, TQ, DQK = q.shape
    TK, DV = k.shape[2], v.shape[3]
    out = torch.empty((B, H, TQ, DV), dtype=q.dtype, device=q.device)
    if B == 0 or H == 0 or TQ == 0:
        return out
    dqk0, dqk1 = split_dim(DQK)
    dv_tile = value_tile(DV)
    skh = 0 if k.shape[1] == 1 else k.stride(1)
    svh = 0 if v.shape[1] == 1 else v.stride(1)
    if key_bias is not None:
        kb, sbb, sbh, sbt, has_bias = key_bias, key_bias.stride(0), key_bias.stride(1), key_bias.stride(2), True
    else:
        kb, sbb, sbh, sbt, has_bias = q, 0, 0, 0, False  # dummy pointer, never read
    if q.dtype == torch.float32:
        dot_prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        dot_prec = "tf32"  # ignored for fp16/bf16 operands
    args = (
        q, k, v, kb, out,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), skh, k.stride(2), k.stride(3),
        v.stride(0), svh, v.stride(2), v.stride(3),
        sbb, sbh, sbt,
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        H, TQ, TK,
    )
    upcast = INTERPRETED and q.dtype == torch.bfloat16
    meta = dict(
        DQK=DQK, DV=DV, DQK0=dqk0, DQK1=dqk1, DV_TILE=dv_tile,
        HAS_BIAS=has_bias, DOT_PREC=dot_prec, UPCAST=upcast,
    )
    if INTERPRETED or q.device.type != "cuda":
        bm, bn = (32 if TQ <= 32 else 64), 32  # fixed tiles: no autotuning here, the interpreter's timings mean nothing
        grid = (triton.cdiv(TQ, bm), B * H)
        _attn_fwd[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=2)
    else:
        grid = lambda m: (triton.cdiv(TQ, m["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd_tuned[grid](*args, **meta)
    return out
