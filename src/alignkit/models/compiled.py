"""Optional ``torch.compile`` of a causal LM's decoder layers (``compile: true``).

Each decoder layer is compiled in place (``nn.Module.compile``), so parameter names, ``state_dict`` and
``save_pretrained`` are unchanged and the response-only log-prob path (``models/scoring.py``) still calls the
decoder and the LM head itself. Shapes are marked dynamic from the start: packed micro-batches change width every
step and a static compile would recompile for each new width. On a small model most of a step is per-operator
overhead (RMSNorm, rotary embeddings, SiLU, attention masking around small matmuls), which compilation fuses; the
first steps pay the compilation (about a minute or more on a CPU core).
"""

from __future__ import annotations

from torch import nn


def compile_decoder_layers(model: nn.Module) -> int:
    """Compile every decoder layer of ``model`` in place; returns how many were compiled (0: no ``layers``
    list found, nothing changed)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
