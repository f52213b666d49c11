"""The per-pixel ops of the models, each defined once with its eager reference and its banded kernels.

Ops import only torch, ``convunext.errors``, ``convunext.runtime`` and ``convunext.utils`` (never the blocks that
use them):

* :mod:`.padding` — the reflect/replicate "same" padding rule (:func:`~.padding.same_pad`), its banded rows
  (:func:`~.padding.padded_rows`) and :class:`~.padding.ReflectConv2d`;
* :mod:`.upsample` — bilinear x2 + zero padding (:func:`~.upsample.upsample_to`) and its banded rows
  (:class:`~.upsample.BandUpsampler`);
* :mod:`.mlp` — the ConvNeXt block's MLP (+ residual, + output activation): :func:`~.mlp.mlp_reference`,
  :func:`~.mlp.banded_mlp` (autograd forward/backward, or the no-grad inference kernel), :func:`~.mlp.mlp_rows_`;
* :mod:`.gate` — the decoder's skip gate and fusion conv on folded weights: :func:`~.gate.gate_reference`,
  :func:`~.gate.banded_gate`, :func:`~.gate.gate_rows_` (the weights and the reference in :mod:`.gate_definition`);
* :mod:`.depthwise` — the depthwise ``k x k`` convolution as a compiled CPU kernel for training
  (:func:`~.depthwise.depthwise_conv7`), PyTorch's as reference and fallback (:func:`~.depthwise.depthwise_reference`);
* :mod:`.compiled_mlp` and :mod:`.compiled_gate` — the block's MLP and the decoder's gate in training, each as one
  compiled CPU kernel (:func:`~.compiled_mlp.compiled_mlp`, :func:`~.compiled_gate.compiled_gate`, which
  :func:`~.mlp.banded_mlp` and :func:`~.gate.banded_gate` try first); :mod:`.compiled` — building, loading,
  checking and choosing the compiled kernels (:class:`~.compiled.CompiledLibrary`, the ``kernels`` setting);
* :mod:`.folding` — BatchNorm folding arithmetic; :mod:`.activations` — the fusable activations;
  :mod:`.banding` — band sizes, pixel-row views, the per-thread workspace; :mod:`.recompute` — recomputing
  one call's activations in backward (activation checkpointing).
"""

from .banding import DEFAULT_BAND_ELEMENTS

__all__ = ["DEFAULT_BAND_ELEMENTS"]
