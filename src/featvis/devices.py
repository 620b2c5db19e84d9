"""Where tensors live: the device a job runs on, TF32, and copies back to the host."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU; any other name is torch's."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions: fp32 range with a 10-bit mantissa, several times
    the fp32 speed on tensor cores. CPU arithmetic is left as it is."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the CPU.  From a GPU the copy goes into pinned memory without waiting for it:
    call `wait_for_copies` before reading the result."""
    tensor = tensor.detach()
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def wait_for_copies(device: torch.device) -> None:
    """Block until the copies `to_host` queued on `device`'s current stream have landed."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def use_channels_last(module: nn.Module, enabled: bool) -> nn.Module:
    """`module`'s 4-d parameters and buffers in NHWC layout when `enabled`.  Convolutions follow
    their weights' layout, so the activations go NHWC too; state dicts load into either layout."""
    return module.to(memory_format=torch.channels_last) if enabled else module
