"""Stage 2: the slice-based exam classifier (paper section 4.1) and its baselines.

Every slice of an exam goes through the encoder (all exams of a batch in one pass);
each slice gives one class-token feature; an aggregator turns an exam's features into
one vector; a small head gives two logits (absent / present).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from sbssl.registry import AGGREGATORS


def _padded(feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum n, K) -> (B, n_max, K) and a validity mask (B, n_max). One exam needs no padding (and, without
    `lengths.tolist()`, traces with a symbolic slice count: sbssl.export)."""
    if lengths.shape[0] == 1:
        return feats[None], torch.ones(1, feats.shape[0], dtype=torch.bool, device=feats.device)
    padded = pad_sequence(feats.split(lengths.tolist()), batch_first=True)
    valid = torch.arange(padded.shape[1], device=feats.device)[None] < lengths[:, None]
    return padded, valid


class ConcatAggregator(nn.Module):
    """The paper's: f slice features concatenated to one f*K vector (exams resampled to f slices)."""

    def __init__(self, dim: int, slices: int):
        super().__init__()
        self.f, self.out_dim = slices, dim * slices

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return feats.reshape(len(lengths), -1), None  # already resampled to f slices per exam


class MaxAggregator(nn.Module):
    def __init__(self, dim: int, slices: int = 0):
        super().__init__()
        self.out_dim = dim

    def forward(self, feats, lengths):
        padded, valid = _padded(feats, lengths)
        return padded.masked_fill(~valid[..., None], float("-inf")).amax(1), None


class MeanAggregator(MaxAggregator):
    def forward(self, feats, lengths):
        padded, valid = _padded(feats, lengths)
        return (padded * valid[..., None]).sum(1) / lengths[:, None].to(padded.dtype), None


class AttentionAggregator(nn.Module):
    """Gated attention pooling (Ilse et al. 2018): learned weights over an exam's slices."""

    def __init__(self, dim: int, slices: int = 0, hidden: int = 128):
        super().__init__()
        self.out_dim = dim
        self.v, self.u, self.w = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, 1)

    def forward(self, feats, lengths):
        padded, valid = _padded(feats, lengths)
        score = self.w(torch.tanh(self.v(padded)) * torch.sigmoid(self.u(padded)))[..., 0]
        weights = score.float().masked_fill(~valid, float("-inf")).softmax(1)
        return (weights[..., None].to(padded.dtype) * padded).sum(1), weights


class InstanceAggregator(nn.Module):
    """Multiple-instance scoring: one linear score per patch token of every slice; the exam's score is a smooth
    maximum of them all (instance-level MIL, as in mi-Net; Wang et al. 2018). A tear is a small local finding: it
    fills one or two tokens of one or two slices, and an exam is positive when any of its instances is. Pooling
    features first (max or mean over tokens, then slices) mixes that token's evidence with every other token's
    before anything scores it; scoring first keeps it whole.

    The smooth maximum is log-mean-exp with sharpness r (LSE pooling, Pinheiro & Collobert 2015): between the mean
    (r -> 0) and the max (r -> inf), independent of the number of instances, and its gradient reaches every
    candidate instance rather than only the current argmax, which matters while the scores are still random.
    The tokens are standardised per dimension first (batch norm without affine, as MAE reads out its features:
    masked-image-modelling features differ in scale across dimensions, which a linear scorer trained for a few
    hundred steps cannot undo). Measured on frozen GMML tokens (docs/history.md, 1,130 synthetic exams): this
    read-out reaches valid AUC 0.85 where max-pooled features reach 0.72 and a random encoder's tokens 0.53;
    with 100-400 labels the gap is smaller or absent.
    Weights: the softmax of the slices' scores, each slice's share of the exam's evidence."""

    reads_tokens = True  # every patch token of a slice, not one pooled feature

    def __init__(self, dim: int, slices: int = 0, sharpness: float = 4.0):
        super().__init__()
        self.out_dim, self.r = 1, sharpness
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.score = nn.Linear(dim, 1)

    def token_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, T, D) tokens -> (N, T) instance scores: where in each slice the evidence lies."""
        return self.score(self.norm(feats.flatten(0, 1)).view_as(feats))[..., 0]

    def log_mean_exp(self, s: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        """Smooth max over the last dimension (-inf entries count as absent; n = the entries present)."""
        n = torch.as_tensor(n, dtype=s.dtype, device=s.device)
        return (torch.logsumexp(self.r * s, -1) - n.log()) / self.r

    def forward(self, feats, lengths):
        tokens = self.token_scores(feats).float()  # (sum n, T)
        per_slice = self.log_mean_exp(tokens, tokens.shape[1])
        padded, valid = _padded(per_slice[:, None], lengths)
        scores = padded[..., 0].masked_fill(~valid, float("-inf"))
        return self.log_mean_exp(scores, lengths)[:, None], scores.softmax(1)


class TwoClassLogits(nn.Module):
    """An exam score s -> logits (-s/2, s/2), whose softmax is sigmoid(s): the 2-class interface of every head."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([-s / 2, s / 2], 1)




class MRNetCNN(nn.Module):
    """The MRNet-style CNN baseline's slice encoder: AlexNet's five convolutions (random init) with batch norm,
    global max pooling. MRNet used ImageNet weights, which had normalised its activations; from random init,
    batch norm is what lets it train in a few hundred steps. The first layer's kernel and stride shrink with the
    image (AlexNet's 11/4 from 128 px up, 5/2 from 64, 3/1 below) so that a small region of interest still
    leaves a feature map to pool."""

    def __init__(self, in_chans: int = 1, img_size: int = 256):
        super().__init__()
        k, s = (11, 4) if img_size >= 128 else (5, 2) if img_size >= 64 else (3, 1)

        def block(i: int, o: int, kernel: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_chans, 64, k, s), nn.MaxPool2d(3, 2, 1), *block(64, 192, 5), nn.MaxPool2d(3, 2, 1),
            *block(192, 384, 3), *block(384, 256, 3), *block(256, 256, 3))
        self.embed_dim, self.in_chans, self.img_size = 256, in_chans, img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(self.features(x), 1).flatten(1)


class SliceClassifier(nn.Module):
    """Encoder per slice -> aggregator over slices -> head: exam-level logits (B, 2)."""

    def __init__(self, encoder: nn.Module, aggregator: str = "concat", slices: int = 32, linear_head: bool = False):
        """encoder: (N, C, H, W) -> (N, K) slice features with `embed_dim` = K (models/build.py makes one)."""
        super().__init__()
        self.encoder, self.aggregator_name = encoder, aggregator
        if aggregator == "concat" and slices < 1:
            raise ValueError("the concat aggregator needs a fixed number of slices (slices >= 1)")
        self.slices = slices
        dim = encoder.embed_dim
        self.aggregate = AGGREGATORS[aggregator](dim, slices)
        if getattr(self.aggregate, "reads_tokens", False):  # the encoder hands over every patch token; it scores
            if not hasattr(encoder, "num_prefix_tokens"):
                raise ValueError(f"the {aggregator} aggregator scores ViT patch tokens; this encoder has none")
            encoder.reset_classifier(0, global_pool="")
            self.head = TwoClassLogits()
        elif linear_head:  # MRNet: max-pooled features straight into one linear layer
            self.head = nn.Linear(self.aggregate.out_dim, 2)
        else:
            self.head = nn.Sequential(nn.Linear(self.aggregate.out_dim, dim), nn.GELU(), nn.Linear(dim, 2))
        self.frozen_bn = False

    def train(self, mode: bool = True) -> SliceClassifier:
        """With `frozen_bn`, the encoder's batch norms keep normalising by their running statistics in training
        too (their scales still learn): an exam's features then do not depend on its batch-mates, and fine-tuning
        sees the features a read-out was fitted on (finetune.frozen_bn)."""
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B * slices, K): what the encoder returns per slice (a ViT's pooled tokens, the CNN's pooled map);
        (B * slices, T, K), its patch tokens, for an aggregator that scores tokens."""
        f = self.encoder(x)
        return f[:, self.encoder.num_prefix_tokens:] if f.ndim == 3 else f

    def forward(self, slices: torch.Tensor, lengths: torch.Tensor, return_weights: bool = False,
                from_features: bool = False):
        """slices: the already selected slices (see `select`), lengths per exam; with from_features, their
        encoder features (B * slices, K) instead (a frozen encoder's, computed once)."""
        feats = slices if from_features else self.slice_features(slices)
        return self.classify(feats, lengths, return_weights)

    def classify(self, feats: torch.Tensor, lengths: torch.Tensor, return_weights: bool = False):
        """Exam logits from per-slice features (B * slices, K): aggregator + head (all a linear probe trains)."""
        pooled, weights = self.aggregate(feats, lengths)
        logits = self.head(pooled)
        return (logits, weights) if return_weights else logits
