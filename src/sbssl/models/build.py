"""The models a config describes: the GMML autoencoder of stage 1 and the exam classifier of stage 2."""

from __future__ import annotations

from omegaconf import DictConfig

from sbssl.models.encoder_file import PretrainedEncoder
from sbssl.models.gmml import GMMLAutoencoder
from sbssl.models.slice_classifier import SliceClassifier
from sbssl.models.vit import create_encoder, set_slice_feature
from sbssl.registry import CNNS


def build_encoder(cfg: DictConfig):
    m = cfg.model
    return create_encoder(m.name, cfg.data.img_size, m.patch_size, m.in_chans, m.drop_path, m.stem, m.depth)


def build_gmml(cfg: DictConfig) -> GMMLAutoencoder:
    return GMMLAutoencoder(build_encoder(cfg), list(cfg.model.skip_blocks), cfg.model.decoder_dim,
                           cfg.model.grad_checkpointing)


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
        return SliceClassifier(CNNS[m.name](m.in_chans, cfg.data.img_size), "max", cfg.finetune.slices,
                               linear_head=True)
    enc = set_slice_feature(build_encoder(cfg), cfg.finetune.slice_feature)  # a token aggregator overrides it
    enc.set_grad_checkpointing(m.grad_checkpointing)
    return SliceClassifier(enc, cfg.finetune.aggregator, cfg.finetune.slices)
