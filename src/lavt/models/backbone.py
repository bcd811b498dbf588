"""The language-aware visual encoder: Swin stages with PWAM fusion and the gated language
pathway after every stage (paper section 3, Fig. 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavt.models.config import LAVTConfig
from lavt.models.fusion import LanguageGate, build_fusion
from lavt.models.swin import PatchEmbed, PatchMerging, SwinBlock


class MultiModalStage(nn.Module):
    """Swin blocks, then fusion: F = PWAM(V, L); E = V + S * F (the language pathway, Eq. 4-5),
    then patch merging of E. Returns (decoder feature, next stage input, sizes)."""

    def __init__(self, cfg: LAVTConfig, i: int, drop_path: list[float]) -> None:
        super().__init__()
        dim = cfg.stage_dims[i]
        self.use_checkpoint = cfg.use_checkpoint
        self.language_pathway = cfg.language_pathway
        self.decoder_reads_gated = cfg.decoder_features == "gated"
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                cfg.num_heads[i],
                cfg.window_size,
                0 if j % 2 == 0 else cfg.window_size // 2,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                drop_path[j],
                cfg.norm_eps,
            )
            for j in range(cfg.depths[i])
        )
        self.fusion = (
            build_fusion(cfg.fusion, dim, cfg.text_dim, cfg.pwam_heads[i], cfg.pwam_dropout, cfg.pwam_norm)
            if cfg.pwam_stages[i]
            else None
        )
        has_gate = self.fusion is not None and cfg.language_pathway and cfg.gate_activation != "none"
        self.res_gate = LanguageGate(dim, cfg.gate_activation) if has_gate else None
        last = i == cfg.num_stages - 1
        self.downsample = None if last else PatchMerging(dim, cfg.norm_eps)

    def forward_blocks(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The text-independent part: the Swin blocks of this stage."""
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x

    def forward_fusion(
        self, x: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor, need_next: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (feature for the decoder, E for the next stage).

        `need_next=False` (last stage, decoder reading F) skips the gate nobody reads.
        """
        if self.fusion is None:
            return x, x
        f = self.fusion(x, l, l_mask)
        if not need_next and not self.decoder_reads_gated:
            return f, x
        if not self.language_pathway:
            e = x
        elif self.res_gate is None:
            e = x + f
        else:
            e = x + self.res_gate(f) * f
        return (e if self.decoder_reads_gated else f), e


class MultiModalSwin(nn.Module):
    """Swin backbone with language fusion; returns the four decoder features, each normalised by
    its `norm{i}` LayerNorm, as (B, C_i, H_i, W_i)."""

    def __init__(self, cfg: LAVTConfig) -> None:
        super().__init__()
        self.num_stages = cfg.num_stages
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.norm_eps)
        if cfg.ape:
            grid = cfg.ape_grid or max(1, cfg.image_size // cfg.patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        total = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * k / (total - 1) if total > 1 else 0.0 for k in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for i in range(cfg.num_stages):
            self.layers.append(MultiModalStage(cfg, i, dpr[start : start + cfg.depths[i]]))
            start += cfg.depths[i]
        for i, dim in enumerate(cfg.stage_dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim, eps=cfg.norm_eps))
        self.apply(_init_weights)

    def stem(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Text-independent start: patch embedding and the stage-1 Swin blocks.

        Everything before the first fusion depends on the image alone, so evaluation of many
        expressions on one image can compute it once and expand it (see `forward_from_stem`).
        """
        x, hw = self.patch_embed(image)
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=hw, mode="bicubic", align_corners=False)
            x = x + pos.flatten(2).transpose(1, 2).to(x.dtype)
        return self.layers[0].forward_blocks(x.to(self._stream_dtype()), hw), hw

    def _stream_dtype(self) -> torch.dtype:
        """The residual stream (tokens between blocks, E_i) stays in the parameters' dtype,
        float32, also under autocast (which would make it bf16 after the first matmul): 24
        residual additions in bf16 cost more accuracy than the casts cost time. An accuracy
        choice, not a speed kernel: both paths of `lavt.ops`'s switch keep it."""
        return self.patch_embed.norm.weight.dtype

    def forward_from_stem(
        self, x: torch.Tensor, hw: tuple[int, int], l: torch.Tensor, l_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = layer.forward_blocks(x, hw)
            feat, x = layer.forward_fusion(x, l, l_mask, need_next=layer.downsample is not None)
            feat = getattr(self, f"norm{i}")(feat)
            # (B, C, H, W) as a channels-last view of the tokens: no copy.
            outs.append(feat.view(feat.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2))
            if layer.downsample is not None:
                x = layer.downsample(x, hw).to(self._stream_dtype())
                hw = ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
        return outs

    def forward(self, image: torch.Tensor, l: torch.Tensor, l_mask: torch.Tensor) -> list[torch.Tensor]:
        """image (B,3,H,W); l (B,N,C_l) language features; l_mask (B,N) 1 on words."""
        x, hw = self.stem(image)
        return self.forward_from_stem(x, hw, l, l_mask)


def _init_weights(m: nn.Module) -> None:
    # Swin's initialisation: truncated normal linears, zero biases, unit LayerNorms.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
