"""Speed kernels for the paper's modules, behind one switch.

The models (`lavt.models`) are written as the paper's computation in plain PyTorch and call
these kernels at marked points (`if ops.fast_paths_enabled(): ...`). Each kernel computes
what the plain code does (tested against it through the switch); which one applies for
which dtype, device and grad state is decided here.

- `switch.py`: `set_fast_paths`, `fast_paths` (context manager), `fast_paths_enabled`, and
  the environment variable `LAVT_FAST_PATHS` (`0` = plain reference, `1` / unset = fast);
- `shifted_windows.py`: Swin's shifted-window attention from the map's tokens by index
  gathers, the fused CPU attention kernel, a memory-lean recomputing backward;
- `lean.py`: memory-lean autograd of LayerNorm -> Linear (-> GELU -> Linear);
- `winograd.py`: Winograd F(2x2)/F(4x4) 3x3 convolutions (float32, CPU);
- `conv.py`: the decoder's kernel and memory-layout plan, folded BatchNorm;
- `cache.py`: inference caches (low-precision weights under autocast, folded BatchNorm,
  attention masks), dropped by `clear_caches`.
"""
from lavt.ops.cache import Linear, autocast_dtype, cache_allowed, cached, clear_caches, linear, low_precision
from lavt.ops.conv import DecoderPlan, conv1x1, conv_bn_relu, decoder_plan, to_plan_format
from lavt.ops.lean import LayerNormLinear, LayerNormMlp, norm_linear, norm_mlp
from lavt.ops.shifted_windows import WindowAttentionFunction, WindowLayout, window_attention, window_layout
from lavt.ops.switch import ENV_VAR, fast_paths, fast_paths_enabled, set_fast_paths  # first: the others read it
from lavt.ops.winograd import conv3x3, conv3x3_applies, tile_size, winograd_calls, winograd_conv3x3

__all__ = [
    "ENV_VAR",
    "DecoderPlan",
    "LayerNormLinear",
    "LayerNormMlp",
    "Linear",
    "WindowAttentionFunction",
    "WindowLayout",
    "autocast_dtype",
    "cache_allowed",
    "cached",
    "clear_caches",
    "conv1x1",
    "conv3x3",
    "conv3x3_applies",
    "conv_bn_relu",
    "decoder_plan",
    "fast_paths",
    "fast_paths_enabled",
    "linear",
    "low_precision",
    "norm_linear",
    "norm_mlp",
    "set_fast_paths",
    "tile_size",
    "to_plan_format",
    "window_attention",
    "window_layout",
    "winograd_calls",
    "winograd_conv3x3",
]
