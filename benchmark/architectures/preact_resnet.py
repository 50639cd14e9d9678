"""PreAct-ResNet18 for 32 px images: the network of BackdoorBench's CIFAR-10 tables, so `calib-cifar10` can run in
the field's setting. He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(https://arxiv.org/abs/1603.05027): each block is BN-ReLU-conv, BN-ReLU-conv, with a 1x1 convolution on the
shortcut where the shape changes. The CIFAR stem is one 3x3 convolution at stride 1 (no max-pool), the stages
have 64/128/256/512 channels at strides 1/2/2/2, and, as in BackdoorBench's model, the last stage's output goes
to global average pooling and the linear head with no final BN-ReLU. 11,171,146 parameters for 10 classes.

It follows timm's model interface (forward_features, forward_head, reset_classifier, group_matcher), so the
harness treats it like any timm network."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

# CIFAR-10's channel statistics, as BackdoorBench normalises its inputs
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.num_classes, self.num_features = num_classes, 512
        self.pretrained_cfg = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD, "input_size": (in_chans, 32, 32),
                               "num_classes": num_classes}
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        cin, stages = 64, []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes) if num_classes else nn.Identity()

    # timm's interface
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^conv1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def preact_resnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreAct-ResNet18 with a CIFAR stem (no pretrained weights)."""
    if pretrained:
        raise ValueError("preact_resnet18 has no pretrained weights: train it from scratch (upstream.pretrained unset)")
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "in_chans")}
    return PreActResNet((2, 2, 2, 2), **kwargs)
