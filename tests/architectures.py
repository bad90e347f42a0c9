"""Tiny real architectures for tests: transformers models built from configs (never downloaded) and
faithful small re-implementations of torchvision's CNN families (torchvision does not install here)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

VOCAB = 100


class _LastHidden(nn.Module):
    """transformers models return dataclasses; exporters want tensors (and GPT-2 wants attention_mask)."""

    def __init__(self, model, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, input_ids, attention_mask=None):
        ids = input_ids
        kwargs = {"attention_mask": attention_mask} if self.with_mask else {}
        if "use_cache" in self.model.forward.__code__.co_varnames:
            kwargs["use_cache"] = False
        return self.model(input_ids=ids, **kwargs).last_hidden_state


class _Pixels(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model(pixel_values=pixels).last_hidden_state


def gpt2():
    from transformers import GPT2Config, GPT2Model

    return _LastHidden(GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=VOCAB)), True)


def bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return _LastHidden(BertModel(cfg), False)


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2, vocab_size=VOCAB)
    return _LastHidden(T5EncoderModel(cfg), False)


def vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    return _Pixels(ViTModel(cfg))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, width=16, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(torch.relu(self.norm2(self.conv1(torch.relu(self.norm1(x))))))


class DenseNet(nn.Module):
    def __init__(self, growth=8, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(DenseLayer(16 + i * growth, growth) for i in range(layers))
        c = 16 + layers * growth
        self.norm, self.fc = nn.BatchNorm2d(c), nn.Linear(c, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        x = torch.relu(self.norm(torch.cat(feats, 1)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (ReLU6) or, with squeeze-excite and SiLU, an EfficientNet MBConv block."""

    def __init__(self, c, expand=4, efficient=False):
        super().__init__()
        act = nn.SiLU if efficient else nn.ReLU6
        hidden = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act()
        )
        self.se = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(hidden, c // 2, 1),
                nn.SiLU(),
                nn.Conv2d(c // 2, hidden, 1),
                nn.Sigmoid(),
            )
            if efficient
            else None
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        h = self.depthwise(self.expand(x))
        if self.se is not None:
            h = h * self.se(h)
        return x + self.project(h)


class MobileNet(nn.Module):
    def __init__(self, efficient=False, c=16):
        super().__init__()
        act = nn.SiLU if efficient else nn.ReLU6
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), act())
        self.blocks = nn.Sequential(InvertedResidual(c, efficient=efficient), InvertedResidual(c, efficient=efficient))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def torchvision_init(model: nn.Module, linear_std: float | None = 0.01) -> nn.Module:
    """The inits torchvision's VGG/MobileNet/EfficientNet/DenseNet apply (kaiming fan_out convs)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
    return model


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(128, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def ids(seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, seq))


IMAGE = (1, 3, 32, 32)

# name -> (factory, example args)
ARCHITECTURES = {
    "gpt2": (gpt2, lambda: (ids(), torch.ones(1, 16, dtype=torch.long))),
    "bert": (bert, lambda: (ids(),)),
    "t5": (t5_encoder, lambda: (ids(),)),
    "vit": (vit, lambda: (torch.randn(IMAGE),)),
    "resnet": (ResNet, lambda: (torch.randn(IMAGE),)),
    "densenet": (lambda: torchvision_init(DenseNet(), None), lambda: (torch.randn(IMAGE),)),
    "mobilenet": (lambda: torchvision_init(MobileNet()), lambda: (torch.randn(IMAGE),)),
    "efficientnet": (lambda: torchvision_init(MobileNet(efficient=True), None), lambda: (torch.randn(IMAGE),)),
    "vgg": (lambda: torchvision_init(VGG()), lambda: (torch.randn(IMAGE),)),
}


def export(name: str, path, dynamo: bool, training: bool = False):
    """Export one architecture to ONNX with the legacy or the dynamo exporter."""
    torch.manual_seed(0)
    factory, make_args = ARCHITECTURES[name]
    model = factory()
    model.train(training)
    args = make_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            kwargs = (
                {}
                if dynamo
                else {
                    "training": torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL,
                    "do_constant_folding": not training,
                }
            )
            if not dynamo:
                names = list(model.forward.__code__.co_varnames[1 : 1 + len(args)])
                kwargs["input_names"] = names
            torch.onnx.export(model, args, str(path), dynamo=dynamo, opset_version=None if dynamo else 17, **kwargs)
        finally:
            logging.disable(logging.NOTSET)
    return path
