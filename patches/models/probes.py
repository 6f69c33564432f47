"""Frozen-feature probes: a frozen encoder in eval mode with a small trained (or, for k-NN, fitted) head.

``linear``: a BatchNorm without affine parameters, then a linear layer over the mean-pooled tokens (MAE's
linear probe). ``attentive``: one cross-attention block whose learned query reads all tokens, then a linear
layer (V-JEPA's attentive probe). ``knn``: weighted k-NN votes over L2-normalised features of the training
split (DINO's rule), no training; its feature is by default the tokens averaged over space in each time slice, in
time order (``time``), which keeps the order of events that a mean over the whole clip (``mean``) averages away.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from patches.models.errors import ModelError
from patches.models.layers import LayerNorm
from patches.utils.devices import amp_autocast
from patches.utils.progress import ProgressLogger

PROBES = ("linear", "attentive", "knn")
KNN_FEATURES = ("time", "mean")


def knn_feature(kind: str, encoder: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``time``: the tokens [B, N, D] averaged over space in each of the grid's time slices, concatenated in time
    order [B, T' * D]; ``mean``: the pooled feature the classifier's head sees [B, D]."""
    if kind == "mean":
        return encoder.pool(tokens)
    if getattr(encoder, "cls_token", None) is not None:
        tokens = tokens[:, 1:]
    return tokens.reshape(tokens.shape[0], encoder.grid.t, -1, tokens.shape[-1]).mean(2).flatten(1)


class LinearProbe(nn.Module):
    """Mean-pooled tokens -> BatchNorm (no affine) -> linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(tokens.float().mean(1)))


class AttentiveProbe(nn.Module):
    """A learned query cross-attends to all tokens (pre-norm attention and MLP, residual), then linear."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_kv = LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.query, std=0.02)
        trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        query = self.query.expand(tokens.shape[0], -1, -1).to(kv.dtype)
        x = query + self.attn(query, kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return self.head(x[:, 0])


class KNNProbe(nn.Module):
    """Weighted k-NN over a bank of L2-normalised training features: class score = sum over the k nearest of
    exp(cosine / temperature). Returns log scores, so that a softmax gives the normalised votes."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 20,
                 temperature: float = 0.07, feature: Any = None) -> None:
        super().__init__()
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))
        self.register_buffer("labels", labels.long())
        self.num_classes, self.k, self.temperature = num_classes, min(k, len(labels)), temperature
        self.feature = feature  # tokens -> the bank's kind of feature; None: the pooled feature

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        query = pooled if self.feature is None else self.feature(tokens)
        sims = F.normalize(query.float(), dim=1) @ self.bank.T
        top, index = sims.topk(self.k, dim=1)
        weights = (top / self.temperature).exp()
        votes = torch.zeros(len(query), self.num_classes, device=query.device)
        votes.scatter_add_(1, self.labels[index], weights)
        return votes.clamp_min(1e-30).log()


class FrozenEncoderProbe(nn.Module):
    """``encoder`` (a :class:`modeling_finetune.VideoClassifier`) frozen in eval mode, ``probe`` on its tokens.

    Only the probe trains, and only the probe is in the state dict: a probe checkpoint references its
    encoder (see :func:`encoder_reference`) instead of holding a copy.
    """

    def __init__(self, encoder: nn.Module, probe: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.probe = probe
        self.grid = encoder.grid

    def train(self, mode: bool = True) -> "FrozenEncoderProbe":
        self.training = mode
        self.probe.train(mode)
        self.encoder.eval()  # always: no drop path, no dropout
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.probe.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.probe.load_state_dict(state_dict, strict=strict, assign=assign)

    def no_weight_decay(self) -> set[str]:
        return {"probe.query"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.encoder.encode_tokens(x)
            pooled = self.encoder.pool(tokens)
        return self.probe(tokens.detach(), pooled.detach())


def build_probe(kind: str, encoder: nn.Module, num_classes: int) -> nn.Module:
    """A fresh ``linear`` or ``attentive`` probe for ``encoder``'s width (``knn``: see :func:`fit_knn`)."""
    dim = encoder.embed_dim
    if kind == "linear":
        return LinearProbe(dim, num_classes)
    if kind == "attentive":
        return AttentiveProbe(dim, num_classes, encoder.blocks[0].attn.num_heads)
    raise ModelError(f"unknown trained probe {kind!r}; known: linear, attentive")


@torch.no_grad()
def fit_knn(encoder: nn.Module, loader: Iterable, device: torch.device, num_classes: int, k: int,
            temperature: float, amp_dtype: torch.dtype | None = None, feature: str = "time") -> KNNProbe:
    """The k-NN probe's bank: the ``feature`` (see :func:`knn_feature`) of every clip ``loader`` gives
    (``(videos, labels, ...)``)."""
    pass  # MOVE-REMOVED-IMPORT
    encoder.eval()
    to_feature = functools.partial(knn_feature, feature, encoder)
    feats, labels = [], []
    progress = ProgressLogger("k-NN bank", print_freq=20)
    for batch in progress.log_every(loader):
        with torch.no_grad(), amp_autocast(device, amp_dtype):
            feats.append(to_feature(encoder.encode_tokens(batch[0].to(device))).float())
        labels.append(batch[1].to(device))
    return KNNProbe(torch.cat(feats), torch.cat(labels), num_classes, k, temperature, to_feature).to(device)
