"""The models a config describes: the GMML autoencoder of stage 1 and the exam classifier of stage 2."""

from __future__ import annotations

from omegaconf import DictConfig

from sbssl.models.encoder_file import PretrainedEncoder
from sbssl.models.gmml import GMMLAutoencoder
from sbssl.models.gmml_cnn import GMMLConvAutoencoder
from sbssl.models.slice_classifier import SliceClassifier
from sbssl.models.vit import create_encoder, set_slice_feature
from sbssl.registry import CNNS


def build_encoder(cfg: DictConfig):
    """The slice encoder `model.name` names: a timm ViT or a CNN (`sbssl.registry.CNNS`), random init."""
    m = cfg.model
    if m.name in CNNS:
        return CNNS[m.name](m.in_chans, cfg.data.img_size)
    return create_encoder(m.name, cfg.data.img_size, m.patch_size, m.in_chans, m.drop_path, m.stem, m.depth)


def build_gmml(cfg: DictConfig) -> GMMLAutoencoder | GMMLConvAutoencoder:
    """Stage 1's autoencoder: the paper's for a ViT, its convolutional counterpart (models/gmml_cnn.py) for a CNN."""
    m = cfg.model
    if m.name in CNNS:
        return GMMLConvAutoencoder(build_encoder(cfg), cfg.data.img_size, m.in_chans, m.conv_masking,
                                   m.decoder_dim)
    return GMMLAutoencoder(build_encoder(cfg), list(m.skip_blocks), m.decoder_dim, m.grad_checkpointing)


def build_pretext(cfg: DictConfig):
    """Stage 1's network for `cfg.pretext`: the GMML autoencoder, or the jigsaw network on the CNN."""
    if cfg.pretext == "jigsaw":
        from sbssl.models.jigsaw import JigsawNet

        return JigsawNet(build_encoder(cfg), cfg.jigsaw.permutations)
    return build_gmml(cfg)


def build_classifier(cfg: DictConfig, encoder: PretrainedEncoder | None = None) -> SliceClassifier:
    """A ViT (its slice feature set by `finetune.slice_feature`) or the MRNet CNN, under the aggregator and head;
    with `encoder`, its pretrained weights loaded (`cfg` configured by `encoder.configure`). The one way a
    pretrained encoder enters a classifier: fine-tuning, the benchmarks and `sbssl.load_encoder` use it."""
    if encoder is not None:
        model = build_classifier(cfg)
        encoder.load_into(model.encoder)
        return model
    m = cfg.model
    if m.name in CNNS:  # MRNet's way: max over slices, one linear layer
        return SliceClassifier(build_encoder(cfg), "max", cfg.finetune.slices, linear_head=True)
    enc = set_slice_feature(build_encoder(cfg), cfg.finetune.slice_feature)  # a token aggregator overrides it
    enc.set_grad_checkpointing(m.grad_checkpointing)
    return SliceClassifier(enc, cfg.finetune.aggregator, cfg.finetune.slices)
