"""Global + local (dense) contrast for segmentation-oriented pretraining, optionally with the decoder.

Chaitanya, Erdil, Karani, Konukoglu, "Contrastive learning of global and local features for
medical image segmentation with limited annotations", NeurIPS 2020 (arXiv:2006.10511; GLCL), with a
DenseCL-style 1×1-conv projection head (Wang et al., CVPR 2021); with ``decoder=True`` the local term is
on the features of a U-Net decoder pretrained with the encoder and handed on to segmentation, as DeCon
does (Decoder Contrastive pretraining: the dense loss on decoder features, the global term on the encoder).

Alignment: the views must be spatially aligned — ``transforms.aligned_views: true`` (the ``dense`` method
preset sets it) draws the geometric augmentations once per sample and the intensity ones per view
(:class:`~medcl.transforms.views.AlignedViewsd`), so location ``m`` of one view's feature map shows the same
anatomy as location ``m`` of the other; the pretrain stage refuses ``dense`` without it. To still learn
invariance to orientation, the method flips each view independently along random spatial axes before the
encoder and flips the feature maps back afterwards; flips are exactly invertible on the grid, so alignment is
kept (up to the sub-cell offset of strided convolutions).

Differs from the papers: GLCL's local loss contrasts a few fixed regions of the decoder's maps of two
intensity-augmented views (its encoder is pretrained first, then the decoder); here both terms train together,
the local term samples ``num_samples`` locations, and negatives are the other locations of the same image
(``local_negatives: image``) or of the batch. DeCon adds its own decoder losses; here the decoder is trained by
the local term alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medcl.errors import ConfigError
from medcl.losses import DenseContrastLoss
from medcl.methods.base import Method, view_stats
from medcl.networks.base import Encoder, global_avg_pool
from medcl.networks.decoders import EncoderUNet
from medcl.networks.heads import DenseProjectionHead


def random_flip_masks(batch: int, spatial_dims: int, p: float, generator: torch.Generator | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """``(batch, spatial_dims)`` bool: whether sample ``i`` is flipped along spatial axis ``d``."""
    return (torch.rand(batch, spatial_dims, generator=generator) < p).to(device)


def apply_flips(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Flip each sample of ``x`` ``(B, C, *S)`` along the spatial axes set in ``masks`` ``(B, len(S))``.

    Self-inverse: ``apply_flips(apply_flips(x, m), m) == x``.
    """
    for d in range(masks.shape[1]):
        m = masks[:, d].view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(m, x.flip(2 + d), x)
    return x


class DenseContrast(Method):
    """Global + local contrast on ``encoder.forward_dense`` (or a pyramid level).

    Args:
        encoder: a 2D or 3D backbone.
        temperature: softmax temperature.
        hidden_dim, out_dim: dense head widths (1×1 convs).
        global_weight: weight of the global (pooled) term; ``1 - global_weight`` goes to the local term.
        num_samples: locations sampled per step for the local term.
        local_negatives: ``"image"`` (other locations of the same image) or ``"batch"``.
        level: which ``forward_pyramid`` map to contrast (-1: the last, as ``forward_dense``;
            -2 gives a finer grid for small inputs).
        flip_p: probability of flipping each view along each spatial axis (0 disables).
        gather_distributed: global negatives from all GPUs.
        decoder: pretrain a U-Net decoder (:class:`~medcl.networks.decoders.EncoderUNet`) with the encoder: the
            local term is on its full-resolution output (``out_dim`` channels), the global term on the encoder's
            map; :meth:`handoff_state` gives it to the ``segment`` stage's ``encoder_unet``.
        decoder_channels, input_channels: the decoder's widths — the same as ``segment.network_options`` for
            the hand-on (the pretrain stage passes those).

    Batch:
        ``views`` ``(B, V>=2, C, *S)`` with views 0 and 1 spatially aligned.
    """

    needs_aligned_views = True

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.1,
        hidden_dim: int = 512,
        out_dim: int = 128,
        global_weight: float = 0.5,
        num_samples: int | None = 256,
        local_negatives: str = "image",
        level: int = -1,
        flip_p: float = 0.5,
        gather_distributed: bool = False,
        decoder: bool = False,
        decoder_channels: list[int] | None = None,
        input_channels: int = 16,
    ) -> None:
        """Build the 1×1-conv dense head on the chosen pyramid level and the global + local criterion.

        Raises:
            ConfigError: the encoder is not 2D/3D, or ``level`` is outside its pyramid.
        """
        super().__init__(encoder)
        sd = encoder.spatial_dims
        if sd not in (2, 3):
            raise ConfigError(f"dense contrast needs 2D or 3D inputs, the encoder is {sd}D", where="pretrain.method",
                              fix="use simclr or clocs for signals")
        channels = encoder.pyramid_channels
        if not -len(channels) <= level < len(channels):
            raise ConfigError(f"level={level} but the encoder has {len(channels)} pyramid levels",
                              where="pretrain.method_options.level", fix=f"use -1 .. -{len(channels)}")
        self.level = level
        in_dim = encoder.dense_dim if level in (-1, len(channels) - 1) else channels[level]
        self.dense_head = DenseProjectionHead(in_dim, hidden_dim, out_dim, spatial_dims=sd)
        self.criterion = DenseContrastLoss(temperature, spatial_dims=sd, global_weight=global_weight,
                                           num_samples=num_samples, local_negatives=local_negatives,
                                           gather_distributed=gather_distributed)
        self.flip_p = float(flip_p)
        self.unet: EncoderUNet | None = None
        self.decoder_options = {"decoder_channels": decoder_channels, "input_channels": int(input_channels)}
        if decoder:
            self.unet = EncoderUNet(encoder, out_dim, **self.decoder_options)

    def handoff_state(self) -> dict[str, object]:
        """What segmentation gets besides the encoder (nothing without a decoder).

        Returns:
            ``{"decoder": the decoder's weights (no encoder, no head), "decoder_options"}`` or ``{}``.
        """
        if self.unet is None:
            return {}
        state = {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()
                 if not k.startswith(("encoder.", "head."))}
        return {"decoder": state, "decoder_options": dict(self.decoder_options)}

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *S) -> (N, out_dim, *S')`` projected feature map."""
        if self.level in (-1, len(self.encoder.pyramid_channels) - 1):
            f = self.encoder.forward_dense(x)
        else:
            f = self.encoder.forward_pyramid(x)[self.level]
        return self.dense_head(f)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Global + local contrast between views 0 and 1 (randomly flipped in training, flipped back).

        Args:
            batch: ``views`` ``(B, V>=2, C, *S)``; only views 0 and 1 are used.

        Returns:
            ``{"loss", "pos_cos", "z_std"}``: the weighted global + local loss (scalar, with gradient) and the
            :func:`~medcl.methods.base.view_stats` monitors of the pooled ``(B, 2, out_dim)`` dense projections.
        """
        v = self.views(batch)[:, :2]
        b, sd = v.shape[0], v.dim() - 3
        x = v.transpose(0, 1).flatten(0, 1)  # (2B, C, *S), view-major
        masks = None
        if self.training and self.flip_p > 0:
            masks = random_flip_masks(2 * b, sd, self.flip_p, device=x.device)
            x = apply_flips(x, masks)
        f = self.dense_features(x)
        d = self.unet(x) if self.unet is not None else None  # (2B, out_dim, *S) decoder features
        if masks is not None:
            f = apply_flips(f, masks)  # back onto the common grid
            d = apply_flips(d, masks) if d is not None else None
        fa, fb = f[:b], f[b:]
        if d is None:
            loss = self.criterion(fa, fb)
        else:
            loss = self.criterion(d[:b], d[b:], g_a=fa, g_b=fb)
        pooled = torch.stack([global_avg_pool(fa), global_avg_pool(fb)], dim=1)
        return {"loss": loss, **view_stats(pooled)}
