"""Attention core for the low-rank encoder: softmax(q k^T + key_bias) v, computed in rank space.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.

Shapes: q [B, H, Tq, Dqk] (softmax scale already folded in), k [B, H or 1, Tk, Dqk],
v [B, H or 1, Tk, Dv], key_bias [B, H, Tk] or None; returns [B, H, Tq, Dv]. A head dimension of 1
on k or v means the operand is shared by all heads (the rank-space B = X W_K1 and C = X W_V1).

Which implementation runs is an explicit choice, ``attention_core(q, k, v, key_bias, kernel=...)``; the model passes
its config's ``attention_kernel`` (``LiteWhisperConfig(attention_kernel=...)``,
``from_pretrained(path, attention_kernel="reference")`` or ``model.config.attention_kernel = ...``). The choices are
``configuration_lite_whisper.ATTENTION_KERNELS``:

- ``"auto"`` (the default): the Triton kernel (``triton_attention_lite_whisper``) on CUDA tensors when triton imports;
  the PyTorch reference everywhere else -- always on the CPU (Triton's CPU interpreter is a test tool, far slower
  than SDPA).
- ``"triton"``: the kernel wherever it can run: CUDA, or the CPU when the kernel was built for Triton's interpreter
  (``TRITON_INTERPRET=1`` set before triton's ``@triton.jit`` ran: the tests). Where it cannot run at all (no triton,
  CPU without the interpreter, CUDA under the interpreter, other devices) ``attention_core`` raises a ValueError
  saying why.
- ``"reference"``: always ``attention_core_reference`` (plain PyTorch SDPA).

Under "auto" and "triton" alike, calls the kernel does not take still run the reference: feature sizes that are not
multiples of 16, dtypes other than fp16 / bf16 / fp32, and calls that need a gradient (the kernel has no backward).

Environment override: ``LITEASR_ATTENTION`` (``auto``, ``triton`` or ``reference``), read at each call, replaces "auto"
only; an explicit "triton" or "reference" (config or call) wins over it.

The kernel runs through a torch custom op (so ``torch.compile`` traces it as one opaque node with a fake
implementation), called only once ``use_kernel`` has chosen the kernel. Its name carries a digest of this file's and
the kernel file's source (``OP_NAME``): every checkpoint loaded with trust_remote_code imports its own copy of these
files, and two copies register one op when their code is the same and two when it differs. To ask without running:
``use_kernel(q, k, v, key_bias, kernel)`` (this call), ``kernel_available(device, kernel)`` (this device, for shapes
the kernel takes) and ``kernel_unavailable_reason(device)``.
"""

import hashlib
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F

from .configuration_lite_whisper import check_kernel
from .triton_attention_lite_whisper import HAS_TRITON, INTERPRETED, attention_core_triton, supported


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


ENV_OVERRIDE = "LITEASR_ATTENTION"


def resolve_kernel(kernel="auto"):
    """The choice after the environment override: ``LITEASR_ATTENTION``, when set, replaces "auto" only."""
    check_kernel(kernel)
    env = os.environ.get(ENV_OVERRIDE, "").strip().lower() if kernel == "auto" else ""
    return check_kernel(env, f"the environment variable {ENV_OVERRIDE}") if env else kernel


def kernel_unavailable_reason(device):
    """None when the Triton kernel can run on tensors of this device, else why it cannot (a phrase that follows
    "attention_kernel='triton' ")."""
    if not HAS_TRITON:
        return "needs triton, which is not installed (or failed to import)"
    device = torch.device(device)
    if device.type == "cuda":
        if INTERPRETED:  # the interpreter only takes CPU tensors
            return ("on CUDA needs TRITON_INTERPRET unset when triton is imported "
                    "(the kernel was built for Triton's CPU interpreter)")
        return None
    if device.type == "cpu":
        if not INTERPRETED:
            return "on CPU needs TRITON_INTERPRET=1 set before triton is imported (Triton's CPU interpreter: slow)"
        return None
    return f"runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), not on {device.type}"


def kernel_available(device, kernel="auto"):
    """Whether ``attention_core(..., kernel=kernel)`` runs the Triton kernel on tensors of this device (for shapes it
    takes, without gradients), after the environment override. Never raises for a "triton" that cannot run: False."""
    kernel = resolve_kernel(kernel)
    if kernel == "reference" or kernel_unavailable_reason(device) is not None:
        return False
    return kernel == "triton" or torch.device(device).type == "cuda"


def use_kernel(q, k, v, key_bias=None, kernel="auto"):
    """Whether ``attention_core(q, k, v, key_bias, kernel=kernel)`` runs the Triton kernel (else the reference).
    Raises ValueError for "triton" (explicit, or from the environment override) where the kernel cannot run."""
    chosen, kernel = kernel, resolve_kernel(kernel)
    if kernel == "reference":
        return False
    reason = kernel_unavailable_reason(q.device)
    if kernel == "triton" and reason is not None:
        source = "attention_kernel='triton'" if chosen == "triton" else f"{ENV_OVERRIDE}=triton (environment)"
        raise ValueError(f"{source} {reason}; use attention_kernel='auto' or 'reference'")
    if reason is not None or (kernel == "auto" and q.device.type != "cuda"):
        return False
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, key_bias))
    return not needs_grad and supported(q, k, v, key_bias)


def _source_digest():
    """First 12 hex digits of the SHA-1 of this file's and the kernel file's source: what the op runs."""
    digest = hashlib.sha1()
    for path in (__file__, sys.modules[attention_core_triton.__module__].__file__):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


OP_NAME = f"liteasr::attention_core_{_source_digest()}"


def _define_op():
    # A copy of these files with the same source registered the op already (the package and a checkpoint saved by the
    # same version): use it. Another version's copy has another name.
    namespace, name = OP_NAME.split("::")
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def _attention_core_op(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return attention_core_triton(q, k, v, key_bias)

    @_attention_core_op.register_fake
    def _(q, k, v, key_bias=None):
        return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))

    return getattr(getattr(torch.ops, namespace), name)


attention_core_op = _define_op()


def attention_core(q, k, v, key_bias=None, kernel="auto"):
    """softmax(q k^T + key_bias) v. `kernel`: "auto" (the Triton kernel on CUDA, else the PyTorch reference), "triton"
    (the kernel wherever it can run, ValueError where it cannot) or "reference" -- see the module docstring."""
    if use_kernel(q, k, v, key_bias, kernel):
        return attention_core_op(q, k, v, key_bias)
    return attention_core_reference(q, k, v, key_bias)
