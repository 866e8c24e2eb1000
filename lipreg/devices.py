"""Where tensors live and what precision they run in: the few runtime facts every part of lipreg shares."""

import itertools
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from lipreg.errors import LipregError

#: Trainer precisions lipreg runs: float32 weights, optionally with autocast (the pair maths stays float32).
SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")


def check_precision(precision: str) -> None:
    """A one-line error for a ``trainer.precision`` that casts the weights (``bf16-true``, ``16-true``, ``64-true``).

    The pair sets, held-out Lipschitz images and attack inputs are float32 tensors of lipreg's own;
    a network cast to another dtype cannot take them, and quotients of bf16 outputs keep two or
    three digits. ``bf16-mixed`` and ``16-mixed`` keep float32 weights and are supported.
    """
    if precision not in SUPPORTED_PRECISIONS:
        raise LipregError(
            f"trainer.precision {precision!r} casts the network's weights, which lipreg's float32 pair sets, "
            "Lipschitz estimates and attacks cannot use; choose 32-true (exact), bf16-mixed or 16-mixed"
        )


def weights_device(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters (or buffers) are; the CPU for a network without any.

    Lightning's ``setup`` hooks see a faked ``LightningModule.device`` (the accelerator's) while the
    weights are still on the CPU, so anything built in ``setup`` asks the weights instead.
    """
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        return tensor.device
    return torch.device("cpu")


def float32_maths(device: torch.device) -> AbstractContextManager:
    """A context that switches autocast off on ``device`` (a no-op where it is off).

    Under ``bf16-mixed`` / ``16-mixed`` Lightning runs ``training_step`` inside autocast, so a
    difference quotient would be a difference of logits rounded to 8 (or 11) bits: at
    initialisation of the 784-64-64-10 MLP the median quotient error was 55 % and a third of the
    adaptive-step accept decisions flipped (``benchmarks/mixed_precision.py``). Pair ascents and
    quotients run inside this context,
    on float32 inputs, so they keep float32 accuracy whatever the trainer's precision.
    """
    if device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def use_exact_float32(allow_tf32: bool = False) -> None:
    """Whether float32 matrix products and convolutions on a CUDA device may run in TF32.

    PyTorch's defaults differ: matrix products are exact float32, cuDNN convolutions TF32
    (10-bit mantissa) on Ampere and later. lipreg's CLI calls this with ``allow_tf32=False`` unless
    ``--tf32 true``, so a "float32" CNN attack, bound or certificate really is float32.
    """
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
