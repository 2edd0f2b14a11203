"""The Triton attention-core kernel against the PyTorch reference.

CPU: the kernel runs in Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment before
triton is imported (``make test`` sets it); without it these tests skip. The interpreter only makes the kernel
runnable on the CPU: ``attention_core`` takes it there only when asked (``kernel="triton"``), its default "auto"
runs the reference on the CPU. GPU: full encoder shapes, skipped without CUDA (run with
``make test TRITON_INTERPRET=0`` on a GPU machine).

Tolerance (FlashAttention's rule): the kernel's max-abs error against a high-precision reference
(float64 on the same inputs) must be at most twice the error of PyTorch's own attention in the same
dtype (``attention_core_reference``, i.e. SDPA, on the same inputs), plus a tiny epsilon -- one unit
in the last place of the dtype at 1.0 -- that absorbs the case where PyTorch happens to be near-exact.
Measured in the interpreter: fp32 kernel error 0.5-1.1x PyTorch's; bf16 ~1.8-2.0x (the kernel rounds the
softmax probabilities to bf16 before the P.V product, as FlashAttention does, while PyTorch's CPU SDPA
keeps them in fp32), so the bar is tighter than FlashAttention's own (its baseline is GPU math-mode
attention with bf16 intermediates).
"""

import os
import re

import pytest
import torch

from liteasr_hf.lite_whisper import attention_lite_whisper
from liteasr_hf.lite_whisper.attention_lite_whisper import (
    OP_NAME,
    attention_core,
    attention_core_op,
    attention_core_reference,
    kernel_available,
    kernel_unavailable_reason,
    use_kernel,
)
from liteasr_hf.lite_whisper.configuration_lite_whisper import ATTENTION_KERNELS
from liteasr_hf.lite_whisper.triton_attention_lite_whisper import (
    HAS_TRITON,
    INTERPRETED,
    attention_core_triton,
    split_dim,
    supported,
    value_tile,
)

needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRETED),
    reason="CPU kernel tests need triton and TRITON_INTERPRET=1 set before triton is imported "
    "(run `make test`, or `TRITON_INTERPRET=1 python -m pytest tests/test_kernel.py`)",
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TRITON and not INTERPRETED),
    reason="needs CUDA, triton and TRITON_INTERPRET unset (`make test TRITON_INTERPRET=0` on a GPU machine)",
)

# The tiny epsilon of the tolerance rule, in units of the dtype's machine epsilon (outputs are O(1)).
EPS_ULPS = 1


def make_inputs(B, H, Tq, Tk, dqk, dv, hk, hv, bias, dtype, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    q = rnd(B, H, Tq, dqk, scale=dqk**-0.5 * 2.0)  # scale folded in; x2 gives peaky softmaxes
    k = rnd(B, hk, Tk, dqk)
    v = rnd(B, hv, Tk, dv)
    kb = rnd(B, H, Tk) if bias else None
    return q, k, v, kb


def check_fa_rule(out, q, k, v, kb):
    """Kernel error vs a high-precision reference <= 2 x (PyTorch same-dtype error) + EPS_ULPS ulps.

    The reference runs on the inputs' device: float64 for fp32 inputs or on the CPU, float32 (TF32 off)
    for fp16/bf16 on a GPU, as in FlashAttention's tests (a float64 CPU reference at 8 x 20 x 1500^2
    would take minutes)."""
    hi = torch.float64 if (q.dtype == torch.float32 or q.device.type == "cpu") else torch.float32
    up = lambda t: None if t is None else t.to(hi)  # noqa: E731
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        truth = attention_core_reference(up(q), up(k), up(v), up(kb)).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch_same = attention_core_reference(q, k, v, kb).double()
    assert out.shape == truth.shape and out.dtype == q.dtype
    err_kernel = (out.double() - truth).abs().max().item()
    err_torch = (torch_same - truth).abs().max().item()
    tol = 2.0 * err_torch + EPS_ULPS * torch.finfo(q.dtype).eps
    assert err_kernel <= tol, f"kernel err {err_kernel:.3g} > 2 x torch err {err_torch:.3g} + eps (tol {tol:.3g})"
    return err_kernel, err_torch


# --------------------------------------------------------------------------------------------------
# Pure-Python pieces (no triton needed)


@pytest.mark.parametrize(
    "d,expect",
    [(16, (16, 0)), (32, (32, 0)), (48, (32, 16)), (64, (64, 0)), (80, (64, 16)), (96, (64, 32)),
     (112, (64, 64)), (304, (256, 64)), (320, (256, 64)), (336, (256, 128)), (480, (256, 256))],
)
def test_split_dim(d, expect):
    d0, d1 = split_dim(d)
    assert (d0, d1) == expect
    assert d0 + d1 >= d and d0 & (d0 - 1) == 0 and (d1 == 0 or (d1 >= 16 and d1 & (d1 - 1) == 0))
    assert d0 + d1 - d < d / 3 + 1  # padding waste stays under a third


def test_split_dim_rejects_non_multiple_of_16():
    with pytest.raises(ValueError):
        split_dim(40)


@pytest.mark.parametrize("d,tile", [(16, 16), (32, 32), (48, 64), (64, 64), (80, 128), (304, 512)])
def test_value_tile(d, tile):
    assert value_tile(d) == tile
    with pytest.raises(ValueError):
        value_tile(d + 8)


def test_supported_shapes():
    q, k, v, kb = make_inputs(2, 3, 5, 7, 32, 16, 1, 3, True, torch.float32)
    assert supported(q, k, v, kb)
    assert not supported(q, k, v, kb[:, :1])  # bias must be per head
    assert not supported(q[..., :24], k[..., :24], v, kb)  # 24 is not a multiple of 16
    assert not supported(q.double(), k.double(), v.double(), kb)
    assert not supported(q, torch.randn(2, 2, 7, 32), v, kb)  # k heads must be 1 or H


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("dv,tq,kept", [(64, 1500, 5), (304, 1500, 1), (192, 1500, 4), (64, 40, 2)])
def test_autotune_space_pruned_to_register_budget(dv, tq, kept):
    """Configs whose fp32 accumulator (BLOCK_M x Dv over the threads) would pass 128 registers a thread are dropped,
    and so are 128-row tiles for queries of at most 64 rows."""
    from liteasr_hf.lite_whisper import triton_attention_lite_whisper as kernel

    tile = value_tile(dv)
    configs = kernel._prune_configs(kernel._CONFIGS, dict(DV_TILE=tile, TQ=tq))
    assert len(configs) == kept
    assert all(c.kwargs["BLOCK_M"] * tile <= 128 * 32 * c.num_warps for c in configs)


def test_auto_on_cpu_is_the_reference_even_under_the_interpreter(kernel_calls):
    """The default "auto" never takes the kernel on the CPU, whatever TRITON_INTERPRET says (the suite sets it): the
    result is the reference's exactly, and neither the op nor the kernel runs."""
    q, k, v, kb = make_inputs(1, 2, 17, 17, 16, 32, 1, 1, True, torch.float32)
    assert not use_kernel(q, k, v, kb) and not kernel_available("cpu")
    for out in (attention_core(q, k, v, kb), attention_core(q, k, v, kb, kernel="auto")):
        torch.testing.assert_close(out, attention_core_reference(q, k, v, kb), rtol=0, atol=0)
    torch.testing.assert_close(attention_core(q, k, v, kb, kernel="reference"), attention_core_reference(q, k, v, kb),
                               rtol=0, atol=0)
    assert kernel_calls == []


@pytest.mark.parametrize("kernel", ["fast", "Triton", "", None, 1])
def test_bad_kernel_choice_names_the_field(kernel):
    q, k, v, kb = make_inputs(1, 2, 9, 9, 16, 16, 1, 1, True, torch.float32)
    with pytest.raises(ValueError, match="attention_kernel must be one of 'auto', 'triton', 'reference'"):
        attention_core(q, k, v, kb, kernel=kernel)
    assert ATTENTION_KERNELS == ("auto", "triton", "reference")


def test_bad_environment_override_names_the_variable(monkeypatch):
    q, k, v, kb = make_inputs(1, 2, 9, 9, 16, 16, 1, 1, True, torch.float32)
    monkeypatch.setenv("LITEASR_ATTENTION", "sdpa")
    with pytest.raises(ValueError, match="LITEASR_ATTENTION must be one of"):
        attention_core(q, k, v, kb)
    attention_core(q, k, v, kb, kernel="reference")  # an explicit choice does not read it


@pytest.mark.parametrize(
    "has_triton, interpreted, device, message",
    [
        (False, True, "cpu", "attention_kernel='triton' needs triton, which is not installed"),
        (True, False, "cpu", "attention_kernel='triton' on CPU needs TRITON_INTERPRET=1 set before triton is imported"),
        (True, True, "cuda", "on CUDA needs TRITON_INTERPRET unset"),
        (True, False, "meta", "not on meta"),
    ],
)
def test_triton_where_it_cannot_run_says_why(monkeypatch, kernel_calls, has_triton, interpreted, device, message):
    """Simulated: no triton, a CPU without the interpreter, CUDA under the interpreter, another device. "triton"
    raises (before looking at shapes or gradients); "auto" quietly takes the reference."""
    monkeypatch.setattr(attention_lite_whisper, "HAS_TRITON", has_triton)
    monkeypatch.setattr(attention_lite_whisper, "INTERPRETED", interpreted)
    assert message.split("'triton' ")[-1] in kernel_unavailable_reason(device)
    assert not kernel_available(device, "triton") and not kernel_available(device)
    if device == "cuda":
        return  # no CUDA tensors here: the device-level answer above is what use_kernel consults
    q, k, v, kb = make_inputs(1, 2, 9, 9, 16, 16, 1, 1, True, torch.float32, device=device)
    with pytest.raises(ValueError, match=message):
        attention_core(q, k, v, kb, kernel="triton")
    with pytest.raises(ValueError, match=message):
        attention_core(q[..., :8], k[..., :8], v, kb, kernel="triton")  # a shape it would not take: still an error
    if device == "cpu":
        torch.testing.assert_close(attention_core(q, k, v, kb), attention_core_reference(q, k, v, kb), rtol=0, atol=0)
        monkeypatch.setenv("LITEASR_ATTENTION", "triton")  # "triton" from the override: the message names it
        expected = f"LITEASR_ATTENTION=triton (environment) {kernel_unavailable_reason(device)}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            attention_core(q, k, v, kb)
    assert kernel_calls == []


def test_environment_override_replaces_auto_only(monkeypatch):
    """LITEASR_ATTENTION decides for "auto" and nothing else. On CUDA (simulated: triton present, no interpreter),
    "auto" takes the kernel unless the override says reference; an explicit "triton" / "reference" always wins."""
    monkeypatch.setattr(attention_lite_whisper, "HAS_TRITON", True)
    monkeypatch.setattr(attention_lite_whisper, "INTERPRETED", False)
    expect = {  # (LITEASR_ATTENTION, kernel) -> kernel on CUDA?
        (None, "auto"): True, ("reference", "auto"): False, ("auto", "auto"): True, ("triton", "auto"): True,
        ("reference", "triton"): True, ("Reference", "triton"): True, ("triton", "reference"): False,
    }
    for (env, kernel), want in expect.items():
        if env is None:
            monkeypatch.delenv("LITEASR_ATTENTION", raising=False)
        else:
            monkeypatch.setenv("LITEASR_ATTENTION", env)
        assert kernel_available("cuda", kernel) == want, (env, kernel)
        assert not kernel_available("cpu", kernel) or kernel == "triton"


@needs_interpreter
def test_environment_override_on_cpu_under_interpreter(monkeypatch, kernel_calls):
    """The real dispatch: LITEASR_ATTENTION=triton turns "auto" into the kernel on the interpreted CPU, an explicit
    "reference" overrides that; LITEASR_ATTENTION=reference leaves an explicit "triton" on the kernel."""
    q, k, v, kb = make_inputs(1, 2, 17, 17, 16, 32, 1, 1, True, torch.float32)
    monkeypatch.setenv("LITEASR_ATTENTION", "triton")
    attention_core(q, k, v, kb)
    assert kernel_calls == ["op", "kernel"]
    kernel_calls.clear()
    torch.testing.assert_close(attention_core(q, k, v, kb, kernel="reference"), attention_core_reference(q, k, v, kb),
                               rtol=0, atol=0)
    assert kernel_calls == []
    monkeypatch.setenv("LITEASR_ATTENTION", "reference")
    torch.testing.assert_close(attention_core(q, k, v, kb), attention_core_reference(q, k, v, kb), rtol=0, atol=0)
    assert kernel_calls == []
    attention_core(q, k, v, kb, kernel="triton")
    assert kernel_calls == ["op", "kernel"]


@pytest.mark.parametrize("dqk,dv", [(48, 64), (64, 32), (32, 32)])
def test_cpu_reference_is_attention_on_the_fused_sdpa_kernel(dqk, dv):
    """The CPU path is softmax(q k^T + bias) v (written out in float64 here; 1e-5: float32 sums over 40 keys of O(1)
    terms err by ~1e-7), and it runs on SDPA's fused CPU kernel also when q/k and v differ in head size, where
    SDPA itself would fall back to the math path that materialises every score (3.5x slower at tiny's shapes)."""
    from torch.profiler import profile

    q, k, v, kb = make_inputs(2, 3, 33, 40, dqk, dv, 1, 3, True, torch.float32)
    naive = torch.softmax(q.double() @ k.double().transpose(-1, -2) + kb.double()[:, :, None, :], -1) @ v.double()
    with profile() as prof:
        out = attention_core_reference(q, k, v, kb)
    torch.testing.assert_close(out.double(), naive, rtol=0, atol=1e-5)
    ran = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ran and "aten::_scaled_dot_product_attention_math" not in ran, ran


@pytest.mark.parametrize("kernel", ["auto", pytest.param("triton", marks=needs_interpreter)])
def test_gradient_goes_through_reference(kernel, kernel_calls):
    """The kernel has no backward: with requires_grad the dispatcher uses the (differentiable) reference, also when
    the kernel is asked for."""
    q, k, v, kb = make_inputs(1, 2, 9, 9, 16, 16, 1, 2, True, torch.float32)
    q.requires_grad_(True)
    attention_core(q, k, v, kb, kernel=kernel).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert kernel_calls == []


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(2, 3, 11, 48), torch.empty(2, 1, 13, 48), torch.empty(2, 1, 13, 80)
        out = attention_core_op(q, k, v, torch.empty(2, 3, 13))
    assert tuple(out.shape) == (2, 3, 11, 80) and out.dtype == torch.float32


def load_copy(tmp_path, package, edit=None):
    """The shipped attention files copied into a fresh package and imported from there, as trust_remote_code imports a
    checkpoint's copy (transformers_modules.<checkpoint>.attention_lite_whisper). `edit` changes the attention
    file's source, as another code version would."""
    import importlib
    import shutil
    import sys

    src = os.path.dirname(attention_lite_whisper.__file__)
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("attention_lite_whisper.py", "triton_attention_lite_whisper.py", "configuration_lite_whisper.py",
                 "context_lite_whisper.py"):
        shutil.copyfile(os.path.join(src, name), folder / name)
    if edit is not None:
        path = folder / "attention_lite_whisper.py"
        path.write_text(edit(path.read_text()))
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(f"{package}.attention_lite_whisper")
    finally:
        sys.path.remove(str(tmp_path))


def test_two_copies_of_the_attention_files_load_in_one_process(tmp_path):
    """Two checkpoints loaded with trust_remote_code import two copies of the attention module under other names. The
    op's name carries a digest of the source: a copy of the same code uses the op already registered (no error for
    registering it twice), a copy of other code registers its own, and each copy runs its own."""
    same = load_copy(tmp_path, "ckpt_same")
    other = load_copy(tmp_path, "ckpt_other", edit=lambda text: text + "\n# another version\n")
    assert same.OP_NAME == OP_NAME and same.attention_core_op is attention_core_op
    assert other.OP_NAME != OP_NAME and other.OP_NAME.startswith("liteasr::attention_core_")
    assert other.attention_core_op is not attention_core_op
    q, k, v, kb = make_inputs(1, 2, 9, 9, 16, 16, 1, 1, True, torch.float32)
    for module in (same, other):  # the reference path, and the ops' fake implementations
        torch.testing.assert_close(module.attention_core(q, k, v, kb), attention_core_reference(q, k, v, kb),
                                   rtol=0, atol=0)
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            out = module.attention_core_op(torch.empty(1, 2, 9, 16), torch.empty(1, 1, 9, 16), torch.empty(1, 1, 9, 32))
        assert tuple(out.shape) == (1, 2, 9, 32)
    if HAS_TRITON and INTERPRETED:  # each copy's op launches its copy's kernel
        check_fa_rule(other.attention_core(q, k, v, kb, kernel="triton"), q, k, v, kb)


# --------------------------------------------------------------------------------------------------
# The kernel in Triton's CPU interpreter: small shapes (the interpreter is slow)

# (B, H, Tq, Tk, dqk, dv, hk, hv, bias, dtype)
H = 3
CASES = [
    (2, H, 37, 37, 16, 16, 1, 1, False, torch.float32),   # shared k/v, power-of-two ranks
    (2, H, 37, 37, 48, 80, 1, 1, True, torch.float32),    # two-chunk qk (32+16), padded v tile (80 -> 128), bias
    (2, H, 70, 70, 80, 48, H, 1, True, torch.float32),    # per-head k, shared v, tail block
    (2, H, 70, 70, 48, 16, 1, H, False, torch.float32),   # shared k, per-head v
    (2, H, 70, 70, 64, 64, H, H, True, torch.float32),    # dense-like: per-head everything
    (1, H, 20, 70, 96, 32, 1, 1, True, torch.float32),    # Tq != Tk, Tq below one tile
    (2, H, 37, 37, 16, 16, 1, 1, True, torch.bfloat16),
    (2, H, 37, 37, 48, 80, 1, 1, True, torch.bfloat16),
    (2, H, 70, 70, 80, 48, H, 1, False, torch.bfloat16),
    (2, H, 70, 70, 48, 48, 1, H, True, torch.bfloat16),
    (2, H, 37, 37, 32, 64, H, H, True, torch.float16),
    (1, 2, 21, 21, 48, 304, 1, 1, True, torch.float32),   # wide v (one 512 tile, masked)
]


@needs_interpreter
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}Tq{}Tk{}-qk{}-v{}-hk{}-hv{}-{}-{}".format(
    *c[:8], "bias" if c[8] else "nobias", str(c[9]).split(".")[-1]))
def test_kernel_matches_reference_interpreter(case):
    B, Hh, Tq, Tk, dqk, dv, hk, hv, bias, dtype = case
    q, k, v, kb = make_inputs(B, Hh, Tq, Tk, dqk, dv, hk, hv, bias, dtype)
    out = attention_core_triton(q, k, v, kb)
    check_fa_rule(out, q, k, v, kb)


@needs_interpreter
def test_kernel_strided_and_expanded_operands():
    """Non-contiguous q (a [B, T, H, D] projection viewed as heads), k expanded with stride 0 over
    heads, v a column slice of a fused projection, bias broadcast with stride 0 over batch."""
    B, Hh, T, dqk, dv = 2, 3, 37, 32, 48
    g = torch.Generator().manual_seed(1)
    q = (torch.randn(B, T, Hh, dqk, generator=g) * dqk**-0.5).transpose(1, 2)  # strides (T*H*D, D, H*D, 1)
    fused = torch.randn(B, T, dqk + dv + 16, generator=g)  # [k | v | other] as from one GEMM
    k = fused[..., :dqk].unsqueeze(1).expand(B, Hh, T, dqk)
    v = fused[..., dqk:dqk + dv].unsqueeze(1)
    kb = torch.randn(1, Hh, T, generator=g).expand(B, Hh, T)
    assert not q.is_contiguous() and k.stride(1) == 0 and kb.stride(0) == 0
    check_fa_rule(attention_core_triton(q, k, v, kb), q, k, v, kb)


@needs_interpreter
def test_triton_choice_uses_kernel_under_interpreter(kernel_calls):
    """kernel="triton" on the CPU under the interpreter goes through the op to the kernel: the result is the kernel's
    bit for bit, and it meets the tolerance rule of the module docstring (FlashAttention's: at most twice PyTorch's
    own fp32 error against a float64 reference, plus one ulp) against the reference."""
    q, k, v, kb = make_inputs(1, 2, 17, 17, 16, 32, 1, 1, True, torch.float32)
    assert kernel_available("cpu", "triton") and use_kernel(q, k, v, kb, kernel="triton")
    out = attention_core(q, k, v, kb, kernel="triton")
    assert kernel_calls == ["op", "kernel"]
    torch.testing.assert_close(out, attention_core_triton(q, k, v, kb), rtol=0, atol=0)
    check_fa_rule(out, q, k, v, kb)
    # shapes the kernel does not take (feature size 24) still run the reference, without an error
    kernel_calls.clear()
    q24, k24 = q[..., :8].repeat(1, 1, 1, 3), k[..., :8].repeat(1, 1, 1, 3)
    torch.testing.assert_close(attention_core(q24, k24, v, kb, kernel="triton"),
                               attention_core_reference(q24, k24, v, kb), rtol=0, atol=0)
    assert kernel_calls == []


@needs_interpreter
def test_opcheck_custom_op():
    """Schema, fake tensor, and AOT dispatch checks of the attention-core custom op (OP_NAME; runs the kernel)."""
    q, k, v, kb = make_inputs(1, 2, 17, 17, 16, 32, 1, 1, True, torch.float32)
    torch.library.opcheck(attention_core_op.default, (q, k, v, kb))
    torch.library.opcheck(attention_core_op.default, (q, k, v, None))


@needs_interpreter
def test_compile_traces_custom_op():
    q, k, v, kb = make_inputs(1, 2, 17, 17, 16, 32, 1, 1, True, torch.float32)
    eager = attention_core(q, k, v, kb, kernel="triton")
    compiled = torch.compile(lambda *a: attention_core(*a, kernel="triton") * 2.0, fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, kb), eager * 2.0, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# GPU: the full encoder shapes (large-v3: 20 heads, 1500 frames)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", [16, 32, 48, 64, 80, 96])
def test_kernel_full_shapes_gpu(rank, dtype):
    B, Hh, T = 8, 20, 1500
    # rank-space k (shared), per-head v of head_dim 64; and rank-space v of the same rank; both with the key bias
    # (the encoder's case: q is low-rank) -- the shapes scripts/benchmark.py times, so they compile once
    q, k, v, kb = make_inputs(B, Hh, T, T, rank, 64, 1, Hh, True, dtype, device="cuda")
    assert use_kernel(q, k, v, kb)  # the default "auto" takes the kernel on CUDA
    check_fa_rule(attention_core(q, k, v, kb, kernel="triton"), q, k, v, kb)
    q, k, v, kb = make_inputs(B, Hh, T, T, rank, rank, 1, 1, True, dtype, device="cuda", seed=1)
    check_fa_rule(attention_core(q, k, v, kb, kernel="triton"), q, k, v, kb)


@pytest.mark.gpu
@needs_cuda
def test_kernel_fp32_gpu():
    q, k, v, kb = make_inputs(2, 4, 333, 333, 48, 80, 1, 4, True, torch.float32, device="cuda")
    check_fa_rule(attention_core(q, k, v, kb, kernel="triton"), q, k, v, kb)


@pytest.mark.gpu
@needs_cuda
def test_compile_and_cuda_graph_gpu():
    q, k, v, kb = make_inputs(1, 20, 1500, 1500, 32, 64, 1, 20, True, torch.float16, device="cuda")
    eager = attention_core(q, k, v, kb)  # also autotunes before capture
    compiled = torch.compile(lambda *a: attention_core(*a), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, kb), eager, rtol=0, atol=0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_core(q, k, v, kb)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


def truncated_factors(linear, rank):
    """Best rank-`rank` factors of a dense nn.Linear (SVD): weight1 [in, k], weight2 [k, out], bias [out]."""
    u, s, vh = torch.linalg.svd(linear.weight.detach().T.double(), full_matrices=False)
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
    return (u[:, :rank] * s[:rank]).float(), vh[:rank].float(), bias.clone()


@needs_interpreter
@pytest.mark.slow
def test_liteasr_matches_sdpa_on_real_tiny_en(tiny_en_path):
    """Real tiny.en (head_dim 64) with q/k/v at rank 48 in layers 0 and 3: those self-attentions take the
    rank-space route through the Triton kernel, and the transcript must equal SDPA's on the same compressed model.
    The kernel is interpreted here, slow and quadratic in the context, so only two layers, on a 15 s dynamic context
    (the 11 s clip plus the 1 s margin: T=750, a quarter of the 30 s window's attention work)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from liteasr_hf import LiteWhisperForConditionalGeneration
    from liteasr_hf.audio import BUNDLED_CLIPS, decode

    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_path).eval()
    processor = WhisperProcessor.from_pretrained(tiny_en_path)
    # Weight-SVD factors (not calibrated PCA) at rank 48 degrade tiny.en's transcript: only the two paths are compared.
    ranks = {"q_proj": 48, "k_proj": 48, "v_proj": 48}
    layers = (0, 3)
    factors = {
        f"layers.{i}.self_attn.{n}": truncated_factors(getattr(dense.model.encoder.layers[i].self_attn, n), r)
        for i in layers for n, r in ranks.items()
    }
    low_rank_config = [dict(ranks) if i in layers else {} for i in range(len(dense.model.encoder.layers))]
    lite = LiteWhisperForConditionalGeneration.from_whisper(dense, low_rank_config, factors)
    audio = decode(os.path.join(BUNDLED_CLIPS, "jfk_inaugural_1961.flac"), "jfk")
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features

    lite.config.attention_kernel = "triton"  # "auto" would take the reference on the CPU
    calls = []
    real_core = attention_lite_whisper.attention_core

    def spy(*args, **kwargs):
        calls.append((use_kernel(*args, **kwargs), args[0].shape[-2]))  # (kernel ran, query positions)
        return real_core(*args, **kwargs)

    tokens = {}
    for impl in ("sdpa", "liteasr"):
        lite.set_attn_implementation(impl)
        with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
            mp.setattr("liteasr_hf.lite_whisper.modeling_lite_whisper.attention_core", spy)
            tokens[impl] = lite.generate(features, num_beams=1, max_new_tokens=40, encoder_context_buckets=[15])
    # the kernel ran in both compressed layers (liteasr only), on the 15 s context's 750 positions
    assert calls == [(True, 750)] * len(layers)
    assert torch.equal(tokens["sdpa"], tokens["liteasr"])
    assert processor.batch_decode(tokens["liteasr"], skip_special_tokens=True)[0].strip()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_encoder_liteasr_gpu(dtype):
    """Two large-v3-shaped encoder layers (d 1280, 20 heads, 1500 positions), random weights: layer 0 with q/k 32 and
    v 48 (attention in rank space, the kernel), layer 1 at the c-like ranks (fused projections, SDPA in dense space).
    Tolerance (FlashAttention's rule on the whole encoder): against the fp32 evaluation of the same weights, the
    liteasr route's relative error is at most twice the stock SDPA route's in the same dtype, with a floor of 2 ulps
    of the dtype (the rank-space route rounds the weight products W_Q2 W_K2^T once more, which the stock route does not
    form)."""
    from liteasr_hf import LiteWhisperConfig
    from liteasr_hf.lite_whisper.modeling_lite_whisper import LiteWhisperEncoder

    ranks = [dict(q_proj=32, k_proj=32, v_proj=48, out_proj=304, fc1=480, fc2=480),
             dict(q_proj=304, k_proj=304, v_proj=304, out_proj=304, fc1=480, fc2=480)]
    config = LiteWhisperConfig(d_model=1280, encoder_layers=2, encoder_attention_heads=20, encoder_ffn_dim=5120,
                               decoder_layers=1, num_mel_bins=128, max_source_positions=1500, low_rank_config=ranks,
                               attention_kernel="triton")
    torch.manual_seed(0)
    with torch.device("cuda"):
        encoder = LiteWhisperEncoder(config).eval().requires_grad_(False)
    mel = torch.randn(2, 128, 3000, device="cuda")

    def run(impl, dt):
        encoder.set_attn_implementation(impl)
        with torch.inference_mode():
            return encoder.to(dt)(mel.to(dt)).last_hidden_state.float()

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        truth = run("sdpa", torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    rel = lambda out: ((out - truth).norm() / truth.norm()).item()  # noqa: E731
    err_stock, err_lite = rel(run("sdpa", dtype)), rel(run("liteasr", dtype))
    assert err_lite <= max(2 * err_stock, 2 * torch.finfo(dtype).eps), (err_lite, err_stock)
