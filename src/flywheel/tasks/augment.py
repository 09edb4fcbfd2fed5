"""Batch augmentation on tensors: photometric and affine, per sample, reproducible.

The whole batch is transformed at once on its device (one `grid_sample` for all
geometric changes), with every random draw taken from an explicit CPU
`torch.Generator`. The generator is the only state: saving it in a checkpoint
and restoring it gives the same augmentations after a resume, on any device.
torchvision is deliberately not a dependency: these few ops are plain torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flywheel.config import AugmentConfig, ConfigError


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """`n` draws from U(low, high) on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float32)


def random_affine_matrices(
    batch: int, cfg: AugmentConfig, generator: torch.Generator
) -> Tensor | None:
    """Per-sample affine matrices `(B, 2, 3)` for `F.affine_grid`, or None when all are off.

    Each matrix maps output coordinates to input coordinates (normalised to
    [-1, 1]): a rotation by up to `rotate_degrees`, a zoom in `1 ± scale` and a
    shift of up to `translate` of the side (a random crop-and-pad), mirrored
    left-right with probability `hflip`. A detection task applies the inverse
    to its boxes (`flywheel.tasks.boxes.warp_boxes`).
    """
    if cfg.rotate_degrees == 0 and cfg.translate == 0 and cfg.scale == 0 and cfg.hflip == 0:
        return None
    angle = _uniform(batch, -cfg.rotate_degrees, cfg.rotate_degrees, generator) * (math.pi / 180)
    zoom = _uniform(batch, 1 - cfg.scale, 1 + cfg.scale, generator)
    shift = _uniform(2 * batch, -cfg.translate, cfg.translate, generator).view(batch, 2) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # (B,)
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[:, 0]], dim=1),
            torch.stack([sin, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    if cfg.hflip > 0:  # drawn only when asked, so other settings keep their random stream
        mirror = torch.rand(batch, generator=generator) < cfg.hflip  # (B,)
        sign = torch.where(mirror, -1.0, 1.0)  # output x → -x before the rest of the map
        theta = torch.cat([theta[:, :, :1] * sign.view(batch, 1, 1), theta[:, :, 1:]], dim=2)
    return theta


def augment_batch(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Augment a batch `(B, C, H, W)` of images in [0, 1]; returns a new tensor, same shape.

    Order: affine (rotate/zoom/shift, border pixels replicated so a shadowed
    background stays shadowed), contrast around each image's mean, brightness
    shift, Gaussian noise, clamp to [0, 1]. Returns `images` unchanged when
    `cfg.enabled` is false.
    """
    if not cfg.enabled:
        return images
    b = images.shape[0]
    device = images.device
    out = images
    theta = random_affine_matrices(b, cfg, generator)
    if theta is not None:
        grid = F.affine_grid(theta.to(device, out.dtype), list(out.shape), align_corners=False)
        out = F.grid_sample(
            out, grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (B, C, H, W)
    if cfg.contrast > 0:
        factor = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, generator).to(device)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        out = (out - mean) * factor.view(b, 1, 1, 1) + mean
    if cfg.brightness > 0:
        shift = _uniform(b, -cfg.brightness, cfg.brightness, generator).to(device)
        out = out + shift.view(b, 1, 1, 1)
    if cfg.noise_std > 0:
        noise = torch.randn(out.shape, generator=generator, dtype=torch.float32)
        out = out + cfg.noise_std * noise.to(device)
    return out.clamp(0.0, 1.0)


def check_augment_range(cfg: AugmentConfig, images: Tensor) -> None:
    """Refuse augmentation that could wipe out images of this data's range of values.

    The additive parts (brightness, noise) are absolute amounts in [0, 1]: on
    images whose values span little of it (scikit-learn's digits read with
    white at 255 span 0.06), a shift of 0.15 pushes whole images to black and
    training learns from blank inputs. The span is the median over `images`
    of each image's max - min; brightness may move an image by at most half of
    it, the noise's standard deviation be at most a quarter.

    Args:
        cfg: the augmentation.
        images: a sample of training inputs `(B, C, H, W)` in [0, 1].

    Raises:
        ConfigError: a parameter would wipe out the images, naming it, the
            data's span and what to do.
    """
    if not cfg.enabled or images.shape[0] == 0:
        return
    flat = images.detach().float().flatten(1)  # (B, C*H*W)
    span = float((flat.amax(dim=1) - flat.amin(dim=1)).median())
    limits = {"brightness": span / 2, "noise_std": span / 4}
    problems = [
        f"train.augment.{name}={getattr(cfg, name):g} exceeds {limit:.3g}"
        for name, limit in limits.items()
        if getattr(cfg, name) > limit
    ]
    if problems:
        raise ConfigError(
            f"{'; '.join(problems)}: the training images' values span only {span:.3g} of "
            f"[0, 1] (median max - min over {images.shape[0]} images), so the augmentation "
            "would wipe them out. Set data.white_level to the data's white (e.g. 16 for "
            "images of levels 0-16) so they use the full range, or lower the parameters."
        )
