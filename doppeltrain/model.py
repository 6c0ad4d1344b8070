"""The embedding network: torchvision's ResNet on one-channel log-mel input.

``build_model`` maps a log-mel batch ``(N, 1, 96, 64)`` to **unnormalized** embeddings
``(N, embedding_dim)``; the training step (and any user of a trained model) L2-normalizes
them, ``torch.nn.functional.normalize(model(x), dim=1)``. Keeping normalization out of the
module keeps its ``state_dict`` identical to torchvision's ``resnet18`` with a one-channel
``conv1``, so a checkpoint's weights load into a plain torchvision model.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from doppeltrain.config import ModelConfig

# BasicBlocks per stage. "resnet18" is the paper's network; "small" halves its depth
# for CPU runs and tests (combine with a narrow --width, e.g. 8 or 16).
MODEL_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "small": (1, 1, 1, 1),
}
PAPER_WIDTH = 64  # torchvision's first-stage width; stages double it: 64, 128, 256, 512


def build_model(cfg: ModelConfig) -> nn.Module:
    """A ResNet with BasicBlocks mapping ``(N, 1, 96, 64)`` to unnormalized ``(N, cfg.embedding_dim)``.

    ``model="resnet18", width=64, embedding_dim=512`` is the reference network:
    ``torchvision.models.resnet18(num_classes=512)`` with ``conv1`` replaced by a
    one-channel convolution (64 filters, kernel 7, stride 2, padding 3), without the
    reference's conv1 bias, which ``bn1`` right after cancels (docs/REFERENCE.md, 'Where
    we deliberately differ'). Other widths
    scale every stage (``width, 2*width, 4*width, 8*width``) and keep torchvision's init.
    Parameters are drawn from torch's global RNG: seed it first for a reproducible init.
    """
    if cfg.model not in MODEL_BLOCKS:
        raise ValueError(f"unknown model {cfg.model!r}: expected one of {', '.join(MODEL_BLOCKS)}")
    if cfg.width < 1 or cfg.embedding_dim < 1:
        raise ValueError(f"model width and embedding_dim must be positive, got {cfg.width} and {cfg.embedding_dim}")
    model = ResNet(BasicBlock, list(MODEL_BLOCKS[cfg.model]), num_classes=cfg.embedding_dim)
    if cfg.width != PAPER_WIDTH:
        _set_width(model, MODEL_BLOCKS[cfg.model], cfg.width, cfg.embedding_dim)
    # Replaced after construction, as the reference does, so conv1 keeps nn.Conv2d's
    # default init rather than torchvision's kaiming_normal.
    model.conv1 = nn.Conv2d(1, cfg.width, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _set_width(model: ResNet, blocks: tuple[int, ...], width: int, embedding_dim: int) -> None:
    """Rebuild the stem and stages of a torchvision ResNet at another first-stage width."""
    model.inplanes = width
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(BasicBlock, width, blocks[0])
    model.layer2 = model._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
    model.layer4 = model._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
    model.fc = nn.Linear(8 * width, embedding_dim)
    # The same init torchvision's ResNet.__init__ gives its layers.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


class TwoViewEncoder(nn.Module):
    """Both views of a batch of pairs through one network, in two forward passes.

    The reference calls its network once per view, so BatchNorm normalizes each view's
    batch with that view's own statistics (under DDP, SyncBatchNorm syncs each pass
    across ranks). One pass over both views would mix them. Wrapping the two passes in
    one module keeps one DDP forward per backward.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, view_a, view_b):
        return self.encoder(view_a), self.encoder(view_b)
