"""gptkit's CPU speed paths, switched on in one place: `accelerate(model)`.

The readable model (`gptkit.layers`, `gptkit.model`) is plain PyTorch: `nn.Linear`,
`F.scaled_dot_product_attention`, `F.cross_entropy`. On this project's CPUs each of
those leaves speed behind, and each kernel here wins it back without changing a
single parameter, state-dict key or checkpoint byte:

- `onednn_linear`: float32 linears through oneDNN instead of MKL (forward and both
  backward matmuls; a decode step's one-row products stream the weights ~1.8x faster);
- `bf16_attention`: bfloat16 attention as batched matmuls with float32 scores,
  about twice SDPA's CPU flash kernel at GPT-2's training lengths;
- `fused_loss`: the training loss taken from the hidden states in chunks, without
  the (tokens, vocab) logits;
- `lora_linear`: a LoRA layer's input cast once for base and adapter, the update added
  by one `addmm`;
- `frozen_cast`: a frozen weight's autocast copy kept between steps (a LoRA run's base
  model is otherwise recast every forward pass);
- `rowwise`: inference's layer norms and tanh GELUs in C (`KernelLayerNorm`, `KernelGELU`);
- `decode_step`: generation's one-token step as flat tensor code (`flat_decoder`), with
  `decode_attention` (one query per row and head against the cache, in C) and `gemv` (a few rows
  times a float32, bfloat16 or int8 weight, streamed once, in C); all are built by `native`
  and split their calls on `thread_pool`'s workers. On a plain cache the whole step is one C
  call (`decode_program`) that runs those same C functions in the modules' order;
- `huge_pages`: a loaded model's weights in transparent huge pages, for decoding;
- `cpu_allocator`: malloc keeps freed memory, so a training step stops page-faulting
  (`training_memory`);
- `int8_linear` and `quantize`: weight-only int8 linears for decoding, applied by
  `quantize_weights(model, "int8")` (this one does change the parameters: a loaded
  model is quantized for use, never trained or saved that way).

`accelerate` swaps the class of each stock module for its kernel subclass, which
overrides `forward` (or one method of it) only. The trainer calls it, and the model
loader for `generate`/`chat`/`serve`, unless `run.kernels=false`; on any device but
the CPU it does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from gptkit.kernels.bf16_attention import CPUAttention
from gptkit.kernels.cpu_allocator import retain_freed_memory
from gptkit.kernels.decode_step import StockDecoder
from gptkit.kernels.fused_loss import FusedLossGPTModel
from gptkit.kernels.huge_pages import move_to_huge_pages
from gptkit.kernels.int8_linear import Int8Linear
from gptkit.kernels.lora_linear import CPULoRALinear
from gptkit.kernels.onednn_linear import OneDNNLinear
from gptkit.kernels.quantize import check_quantize, quantize_weights
from gptkit.kernels.rowwise import KernelGELU, KernelLayerNorm
from gptkit.layers.attention import MultiHeadAttention
from gptkit.layers.gelu import GELU
from gptkit.layers.layer_norm import LayerNorm
from gptkit.layers.lora import LoRALinear
from gptkit.model.gpt import GPTModel

# Exact stock class -> its kernel subclass. Exact: a researcher's subclass may change
# `forward`, and swapping its class would silently drop that change.
KERNEL_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: OneDNNLinear,
    MultiHeadAttention: CPUAttention,
    GPTModel: FusedLossGPTModel,
    LoRALinear: CPULoRALinear,
    LayerNorm: KernelLayerNorm,
    GELU: KernelGELU,
}


def _on_cpu(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors)


def accelerate(model: nn.Module, *, inference: bool = False) -> bool:
    """Switch `model` (on the CPU) over to gptkit's kernels; True if it did.

    `inference=True` also moves the weights into huge pages (for a model loaded to
    decode, not one about to be trained: the copy is made once). A model on any
    other device is left exactly as it is.
    """
    if not _on_cpu(model):
        return False
    for module in model.modules():
        kernel_class = KERNEL_CLASSES.get(type(module))
        if kernel_class is not None:
            module.__class__ = kernel_class
    if inference:
        move_to_huge_pages(model)
    return True


def is_accelerated(model: nn.Module) -> bool:
    return any(type(m) in KERNEL_CLASSES.values() for m in model.modules())


def flat_decoder(model: nn.Module) -> StockDecoder | None:
    """The flat one-token step for an accelerated CPU model of the stock parts, else None.

    A model accelerated on the CPU and moved to a GPU afterwards keeps its kernel
    classes (which fall back to the plain path there), but not this step.
    """
    return StockDecoder.for_model(model) if _on_cpu(model) else None


@contextlib.contextmanager
def training_memory(device: torch.device) -> Iterator[bool]:
    """While training on the CPU, malloc keeps freed memory for the next step; yields whether it does."""
    with retain_freed_memory(device.type == "cpu") as active:
        yield active


__all__ = [
    "KERNEL_CLASSES", "Int8Linear", "accelerate", "check_quantize", "flat_decoder", "is_accelerated", "quantize_weights",
    "training_memory",
]
