"""Attention core for the low-rank encoder: softmax(q k^T + key_bias) v, computed in rank space.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.

Shapes: q [B, H, Tq, Dqk] (softmax scale already folded in), k [B, H or 1, Tk, Dqk],
v [B, H or 1, Tk, Dv], key_bias [B, H, Tk] or None; returns [B, H, Tq, Dv]. A head dimension of 1
on k or v means the operand is shared by all heads (the rank-space B = X W_K1 and C = X W_V1).

``attention_core`` dispatches:
- the Triton kernel (``triton_attention_lite_whisper``), through the ``liteasr::attention_core`` custom op
  (so ``torch.compile`` traces it as one opaque node with a fake implementation), when triton imports,
  the tensors are on CUDA -- or on the CPU with ``TRITON_INTERPRET=1`` set before triton was imported
  (the tests) --, the shapes/dtypes are ones the kernel takes (feature sizes multiples of 16, fp16 /
  bf16 / fp32), and no gradient is needed (the kernel has no backward);
- otherwise ``attention_core_reference`` (plain PyTorch SDPA), e.g. on CPU, on Macs, without triton,
  or with ``LITEASR_ATTENTION=reference`` in the environment.
"""

import os
from typing import Optional

import torch
import torch.nn.functional as F

from .triton_attention_lite_whisper import HAS_TRITON, attention_core_triton, interpreter_enabled, supported

OP_NAME = "liteasr::attention_core"


def attention_core_reference(q, k, v, key_bias=None):
    """Plain PyTorch: the reference for the kernel and the CPU path."""
    k = k.expand(q.shape[0], q.shape[1], *k.shape[2:])
    v = v.expand(q.shape[0], q.shape[1], *v.shape[2:])
    mask = None if key_bias is None else key_bias[:, :, None, :].to(q.dtype)
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if q.device.type == "cpu" and d_qk != d_v:
        # SDPA's fused CPU kernel takes one head size for q, k and v; rank-space operands often have two (q/k rank 48,
        # dense v 64), and SDPA then falls back to its math path, which materialises every score: 3.5x slower at
        # whisper-tiny's shapes on a 2-core CPU. Zero columns change no score and add output columns we drop.
        d = max(d_qk, d_v)
        q, k, v = F.pad(q, (0, d - d_qk)), F.pad(k, (0, d - d_qk)), F.pad(v, (0, d - d_v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)[..., :d_v]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


def kernel_available(device):
    """Whether the Triton kernel can run on tensors of this device."""
    if not HAS_TRITON or os.environ.get("LITEASR_ATTENTION", "").lower() == "reference":
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return not interpreter_enabled()  # the interpreter only takes CPU tensors
    return device.type == "cpu" and interpreter_enabled()


def _define_op():
    # A checkpoint loaded with trust_remote_code imports a second copy of this file (under
    # transformers_modules); the op is registered once per process, by whichever copy comes first.
    try:
        return torch.ops.liteasr.attention_core
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def _attention_core_op(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if kernel_available(q.device) and supported(q, k, v, key_bias):
            return attention_core_triton(q, k, v, key_bias)
        return attention_core_reference(q, k, v, key_bias).contiguous()

    @_attention_core_op.register_fake
    def _(q, k, v, key_bias=None):
        return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))

    return torch.ops.liteasr.attention_core


attention_core_op = _define_op()


def attention_core(q, k, v, key_bias=None):
    """softmax(q k^T + key_bias) v -- the Triton kernel where it can run, else the PyTorch reference."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, key_bias)
    )
    if not needs_grad and kernel_available(q.device) and supported(q, k, v, key_bias):
        return attention_core_op(q, k, v, key_bias)
    return attention_core_reference(q, k, v, key_bias)
