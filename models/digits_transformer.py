"""digits-transformer: a tiny vision transformer on scikit-learn's 8x8 handwritten digits.

Input: raw pixel intensities 0..16, shape (8, 8). The model scales them to 0..1, cuts the image into
``patch x patch`` patches (16 tokens of 4 pixels by default), embeds them, prepends a class token and
runs pre-LayerNorm transformer blocks (nanoGPT layout, without the causal mask):

    patch_embed + pos_embed, cls_token
    blocks.{i}: ln_1 -> attn -> residual, ln_2 -> mlp -> residual
    ln_f -> head (on the class token)   10 classes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.registry import register_model

DIGIT_LABELS = tuple(str(digit) for digit in range(10))
IMAGE_SIZE = 8
MAX_PIXEL = 16.0


@dataclass(frozen=True)
class DigitsTransformerConfig:
    patch: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    dropout: float = 0.1

    @property
    def n_tokens(self) -> int:
        return (IMAGE_SIZE // self.patch) ** 2


class SelfAttention(nn.Module):
    def __init__(self, config: DigitsTransformerConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: DigitsTransformerConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: DigitsTransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class DigitsTransformer(ServableModel):
    def __init__(self, config: DigitsTransformerConfig) -> None:
        super().__init__(
            InputSpec(
                shape=(IMAGE_SIZE, IMAGE_SIZE),
                min_value=0.0,
                max_value=MAX_PIXEL,
                description="8x8 grayscale digit, pixel intensities 0..16 (scikit-learn digits)",
            ),
            OutputSpec(labels=DIGIT_LABELS),
        )
        if IMAGE_SIZE % config.patch:
            raise ValueError(f"patch={config.patch} must divide the image size {IMAGE_SIZE}")
        self.config = config
        self.register_buffer("pixel_scale", torch.tensor(1.0 / MAX_PIXEL))
        self.patch_embed = nn.Linear(config.patch * config.patch, config.n_embd)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.n_tokens + 1, config.n_embd))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.n_embd))
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, len(DIGIT_LABELS))
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 8, 8) -> (B, n_tokens, patch*patch), patches in row-major order."""
        p, n = self.config.patch, IMAGE_SIZE // self.config.patch
        return x.reshape(-1, n, p, n, p).transpose(2, 3).reshape(-1, n * n, p * p)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.patchify(x * self.pixel_scale))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.embed_dropout(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, 0]))


@register_model(
    ModelCard(
        name="digits-transformer",
        task="image classification (8x8 digits)",
        dataset="digits",
        notes="ViT-style: 2x2 patches as 16 tokens + class token, pre-LayerNorm blocks, dropout",
    )
)
def digits_transformer(**overrides: Any) -> DigitsTransformer:
    return DigitsTransformer(DigitsTransformerConfig(**overrides))
