"""Attention core for the low-rank encoder: softmax(q k^T + key_bias) v, computed in rank space.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.

Shapes: q [B, H, Tq, Dqk] (softmax scale already folded in), k [B, H or 1, Tk, Dqk],
v [B, H or 1, Tk, Dv], key_bias [B, H, Tk] or None; returns [B, H, Tq, Dv]. A head dimension of 1
on k or v means the operand is shared by all heads (the rank-space B = X W_K1 and C = X W_V1).
"""

import torch
import torch.nn.functional as F


def attention_core_reference(q, k, v, key_bias=None):
    """Plain PyTorch: the reference for the kernel and the CPU path."""
    k = k.expand(q.shape[0], q.shape[1], *k.shape[2:])
    v = v.expand(q.shape[0], q.shape[1], *v.shape[2:])
    mask = None if key_bias is None else key_bias[:, :, None, :].to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


def attention_core(q, k, v, key_bias=None):
    return attention_core_reference(q, k, v, key_bias)
