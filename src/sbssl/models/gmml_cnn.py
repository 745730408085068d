"""GMML for convolutional encoders (beyond the paper): the same group masks and masked-L1 target as the ViT's
stage 1, with the classifier's CNN (the MRNet-style CNN, or ResNet-18: models/resnet.py) as the encoder and a
light convolutional decoder.

A convolution, unlike a transformer, has no notion of "these positions are absent": what the masked pixels hold
spreads through every kernel that overlaps them, and batch norm mixes them into its statistics. Two ways to feed
the CNN (`model.conv_masking`), measured against each other in docs/results.md (dense scored higher on the demo's
data and is the recipes' choice; why is not settled here):

- `sparse` (SparK, Tian et al. ICLR 2023; ConvNeXt V2's FCMAE): the masked positions are dropped. The input is
  zeroed there and every convolution's output is zeroed again at the positions masked at its resolution, so a
  visible position only ever reads visible pixels (and zeros); batch norm takes its statistics over visible
  positions only (a residual block: both branches masked before they are summed). The mask groups must be aligned
  with the encoder's output stride (`mask.align`), so that each cell of every feature map is wholly visible or
  wholly masked. Before decoding, the masked cells of the deepest map are filled with a learned mask embedding.
  The replacement type (noise, ...) is then never seen.
- `dense`: the GMML-corrupted image (noise, zeros, ... in the groups) through plain convolutions, as the ViT sees
  it: simple, but the encoder learns on inputs that fine-tuning never shows it, and its batch-norm statistics are
  those of corrupted images (fine-tuning re-estimates them on clean slices: engine/finetune.py).

The decoder reads the deepest feature map only (the map the classifier pools), so everything the reconstruction
needs must be in it: a 1x1 projection, then one (transposed 2x2 conv, 3x3 conv) stage per factor of 2 of the
stride, then a 1x1 conv to pixels. The loss is the masked L1 of eq. 2, as for the ViT.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

SPARSE, DENSE = "sparse", "dense"
CONV_MASKING = (SPARSE, DENSE)


def output_stride(features: nn.Module, in_chans: int, img_size: int) -> int:
    """Input pixels per cell of the encoder's last feature map (one throwaway forward, in eval mode)."""
    was = features.training
    features.eval()
    with torch.no_grad():
        h = features(torch.zeros(1, in_chans, img_size, img_size)).shape[-1]
    features.train(was)
    if img_size % h:
        raise ValueError(f"a {img_size} px input gives a {h}-cell feature map: not an integer stride")
    return img_size // h


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Batch norm whose training statistics (and running estimates) come from the visible positions only (`keep`:
    (B, 1, H, W), 1 visible, 0 masked); in eval mode, plain batch norm."""
    if not bn.training:
        return bn(x)
    xf, k = x.float(), keep.float()
    count = k.sum().clamp(min=2.0)
    mean = (xf * k).sum((0, 2, 3)) / count
    var = (((xf - mean[None, :, None, None]) ** 2) * k).sum((0, 2, 3)) / count
    with torch.no_grad():
        bn.num_batches_tracked += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.detach(), m)
        bn.running_var.lerp_(var.detach() * count / (count - 1), m)
    y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + bn.eps)[None, :, None, None]
    return (y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]).to(x.dtype)


def visible_at(keep: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The visibility map at a coarser resolution: a cell is visible only if every pixel under it is."""
    if keep.shape[-2:] == size:
        return keep
    return 1.0 - F.adaptive_max_pool2d(1.0 - keep, size)


def sparse_forward(features: nn.Sequential, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """SparK's masked convolution, simulated densely: zero the masked positions after every layer that could
    fill them (convolutions, batch norm's shift), batch norm over visible positions. Returns the deepest map and
    its visibility."""
    return _sparse(features, x * keep, keep)


def _sparse(layer: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer (or a stack, or a residual block) of `sparse_forward`."""
    if isinstance(layer, nn.Sequential):
        for sub in layer:
            x, keep = _sparse(sub, x, keep)
        return x, keep
    if isinstance(layer, BasicBlock):  # a ResNet block: both branches masked, summed, then the ReLU
        out, k = _sparse(nn.Sequential(layer.conv1, layer.bn1, layer.relu, layer.conv2, layer.bn2), x, keep)
        skip = _sparse(layer.downsample, x, keep)[0] if layer.downsample is not None else x
        return F.relu(out + skip) * k.to(x.dtype), k
    if isinstance(layer, nn.BatchNorm2d):
        x = masked_batch_norm(layer, x, keep)
    elif isinstance(layer, (nn.Conv2d, nn.ReLU, nn.GELU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)):
        x = layer(x)
    else:
        raise TypeError(f"sparse GMML: no masked version of {type(layer).__name__}")
    keep = visible_at(keep, x.shape[-2:])
    return x * keep.to(x.dtype), keep


class ConvDecoder(nn.Module):
    """The light decoder: 1x1 projection, then log2(stride) x (transposed 2x2 conv, BN, ReLU, 3x3 conv, BN, ReLU),
    halving the width at each stage, then a 1x1 conv to pixels."""

    def __init__(self, in_dim: int, stride: int, out_chans: int, width: int = 128):
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"the conv decoder upsamples by powers of two; the encoder's stride is {stride}")
        layers: list[nn.Module] = [nn.Conv2d(in_dim, width, 1)]
        w = width
        for _ in range(int(math.log2(stride))):
            o = max(w // 2, 16)
            layers += [nn.ConvTranspose2d(w, o, 2, 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                       nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
            w = o
        layers.append(nn.Conv2d(w, out_chans, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GMMLConvAutoencoder(nn.Module):
    """x_hat = D(E(x)) with E the classifier's CNN (`encoder.features`, an nn.Sequential), masked as
    `conv_masking` says; `forward(corrupted, mask)` with mask True where pixels were replaced."""

    def __init__(self, encoder: nn.Module, img_size: int, in_chans: int = 1, conv_masking: str = DENSE,
                 decoder_dim: int = 0):
        super().__init__()
        if conv_masking not in CONV_MASKING:
            raise ValueError(f"conv_masking {conv_masking!r}: want {' or '.join(CONV_MASKING)}")
        self.encoder, self.sparse = encoder, conv_masking == SPARSE
        self.stride = output_stride(encoder.features, in_chans, img_size)
        dim = encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(dim))  # 1-D: no weight decay (engine/schedules.py)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = ConvDecoder(dim, self.stride, in_chans, decoder_dim or 128)

    @property
    def required_align(self) -> int:
        """mask.align must be a multiple of this: the encoder's stride when masked positions are dropped."""
        return self.stride if self.sparse else 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.sparse or mask is None:  # dense: the corrupted image as it is (and clean images for figures)
            return self.head(self.encoder.features(x))
        feats, keep = sparse_forward(self.encoder.features, x, (~mask).to(x.dtype))
        filled = torch.where(keep.bool(), feats, self.mask_token.to(feats.dtype)[None, :, None, None])
        return self.head(filled)
