"""The model zoo: stock models at their libraries' own initialisations, built from configs (never downloaded), and
deliberately broken twins with classic init defects. A stock model must pass the default gate (no error); a twin
must be flagged at its stated severity. transformers models come from their configs; the CNNs are faithful small
re-implementations of torchvision/timm blocks with the init code those libraries apply (torchvision does not
import beside the CPU torch here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from architectures import DenseLayer
from torch import nn

VOCAB = 1000


@dataclass
class ZooModel:
    name: str
    build: Callable[[], tuple[nn.Module, dict]]  # (model in eval mode, keyword inputs)
    broken: str | None = None  # for a twin: the code that must flag it
    severity: str = "error"  # the least severity that flag must have
    family: str = ""
    notes: list[str] = field(default_factory=list)
    # (image size, batch) at which benchmarks/accuracy.py measures a model at its checkpoints' size: a CNN on images
    # of that size (its training size), every such model at that batch (the probe at scale costs its width)
    measured_at: tuple[int, int] | None = None


def _ids(n: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(0))


def _text(n: int = 32) -> dict:
    """Token ids and an all-ones attention mask (the legacy ONNX exporter cannot trace HF decoders without it)."""
    return {"input_ids": _ids(n), "attention_mask": torch.ones(1, n, dtype=torch.long)}


def _image(size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _decoder_config(cls_name: str, **extra):
    import transformers

    settings = dict(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return getattr(transformers, cls_name)(**{**settings, **extra})


def _causal_lm(model_cls: str, config_cls: str, **extra) -> Callable:
    def build():
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, model_cls)(_decoder_config(config_cls, **extra)).eval(), _text()

    return build


def gpt2(layers: int = 4, unscaled_residual: bool = False, tied_std: float | None = None, width: int = 128) -> Callable:
    def build():
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                n_layer=layers,
                n_embd=width,
                n_head=4,
                vocab_size=VOCAB,
                n_positions=64,
                use_cache=False,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if unscaled_residual and name.endswith("c_proj.weight"):
                    p.normal_(0, 0.02)  # GPT-2's 1/sqrt(2 L) residual scaling removed
            if tied_std is not None:
                model.transformer.wte.weight.normal_(0, tied_std)
        return model.eval(), _text()

    return build


# TinyLlama-1.1B's hidden 2048 at transformers' initializer_range 0.02 keeps ~0.8 of a projection's input energy;
# the other decoders here (hidden 128 at 0.02) keep 5% and their attention and MLP branches barely touch the
# residual stream. This one has the 1B model's per-layer gain at hidden 256 (head size 64, as there).
llama_at_scale = _causal_lm(
    "LlamaForCausalLM",
    "LlamaConfig",
    hidden_size=256,
    intermediate_size=704,
    num_key_value_heads=1,
    initializer_range=0.02 * (2048 / 256) ** 0.5,
)


def llama_without_attention_scale():
    model, inputs = _causal_lm("LlamaForCausalLM", "LlamaConfig")()
    for module in model.modules():
        if hasattr(module, "scaling"):
            module.scaling = 1.0
    return model, inputs


def bert(linear_std: float | None = None) -> Callable:
    def build():
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        model = BertModel(
            BertConfig(
                hidden_size=128,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=512,
                vocab_size=VOCAB,
                max_position_embeddings=64,
            )
        )
        if linear_std is not None:
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.normal_(0, linear_std)
        return model.eval(), {"input_ids": _ids()}

    return build


def roberta():
    """Position ids derived from the input ids: word + position + type embeddings are three branches of one input,
    summed and read through a LayerNorm."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    model = RobertaModel(
        RobertaConfig(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            vocab_size=VOCAB,
            max_position_embeddings=80,
        )
    )
    return model.eval(), {"input_ids": _ids() + 2}


def t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(
        T5Config(d_model=128, d_ff=512, num_layers=2, num_heads=4, d_kv=32, vocab_size=VOCAB, use_cache=False)
    )
    return model.eval(), {"input_ids": _ids(), "decoder_input_ids": _ids(16)}


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            image_size=32,
            patch_size=8,
            num_labels=10,
        )
    )
    return model.eval(), {"pixel_values": _image()}


def vit_at_scale():
    """ViT-B/16 as transformers configures it by default (768 features, 12 blocks, 224x224 images in 16x16 patches,
    1,000 classes): at the zoo's 128 features the class token, one vector per network, moves every row by its
    instance's draw (docs/theory.md §15)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(num_labels=1000)).eval(), {"pixel_values": _image(224)}


def whisper_encoder():
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        num_mel_bins=80,
        max_source_positions=50,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        use_cache=False,
    )
    return WhisperModel(config).encoder.eval(), {"input_features": torch.randn(1, 80, 100)}


def mamba():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(
        MambaConfig(
            hidden_size=64, num_hidden_layers=2, vocab_size=VOCAB, state_size=8, use_cache=False, pad_token_id=0
        )
    ).eval(), {"input_ids": _ids()}


# -- diffusers ---------------------------------------------------------------------------------------------


class _Sample(nn.Module):
    """diffusers models return output dataclasses: their `.sample`."""

    def __init__(self, model, decode: bool = False):
        super().__init__()
        self.model, self.decode = model, decode

    def forward(self, sample, timestep=None):
        return (self.model.decode(sample) if self.decode else self.model(sample, timestep)).sample


def unet2d():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return _Sample(unet).eval(), {"sample": torch.randn(1, 3, 16, 16), "timestep": torch.tensor([10])}


def vae_decoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    return _Sample(vae, decode=True).eval(), {"sample": torch.randn(1, 4, 8, 8)}


# -- CNNs with torchvision/timm init ----------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block; zero_init_residual zeroes bn3's gamma (the block starts as identity)."""

    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 convs, the sum with the identity through a ReLU."""

    expansion = 1

    def __init__(self, cin, width, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet50ish(nn.Module):
    """torchvision's ResNet (Bottleneck blocks by default, BasicBlock for ResNet-18/34) at any width and depth."""

    def __init__(self, width=8, blocks=(2, 2, 2), classes=10, zero_init_residual=False, gamma=None, block=None):
        super().__init__()
        block = block or Bottleneck
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            w, out = width * 2**i, width * 2**i * block.expansion
            layers.append(
                nn.Sequential(*[block(cin if j == 0 else out, w, 2 if (i and j == 0) else 1) for j in range(n)])
            )
            cin = out
        self.layers = nn.Sequential(*layers)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, classes)
        for m in self.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1 if gamma is None else gamma)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layers(x)), 1))


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation: avgpool -> fc1 -> act -> fc2 -> gate (hardsigmoid or sigmoid) -> scale."""

    def __init__(self, c, squeeze, gate=nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.avgpool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    """MobileNetV3's inverted residual (hardswish, SE with hardsigmoid) or EfficientNet's (SiLU, SE with sigmoid)."""

    def __init__(self, c, expand=4, efficient=False):
        super().__init__()
        act = nn.SiLU if efficient else nn.Hardswish
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            SqueezeExcite(
                hidden,
                max(c // 4, 8) if efficient else _make_divisible(hidden // 4),
                nn.Sigmoid if efficient else nn.Hardsigmoid,
                nn.SiLU if efficient else nn.ReLU,
            ),
            nn.Conv2d(hidden, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.block(x)


def _make_divisible(v, divisor=8):
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def _mobilenet_init(model: nn.Module, efficient: bool = False) -> None:
    """torchvision's MobileNetV3 / EfficientNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if efficient:
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV3ish(nn.Module):
    def __init__(self, efficient=False, c=16, blocks=3, classes=10):
        super().__init__()
        act = nn.SiLU if efficient else nn.Hardswish
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), act())
        self.blocks = nn.Sequential(*[MBConv(c, efficient=efficient) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c), act())
        self.classifier = nn.Sequential(nn.Linear(4 * c, 64), act(), nn.Dropout(0.2), nn.Linear(64, classes))
        _mobilenet_init(self, efficient)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# torchvision's mobilenet_v3_small: (input, kernel, expanded, output, squeeze-excitation, activation, stride)
MOBILENET_V3_SMALL = [
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]

MOBILENET_V3_LARGE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]


def _conv_norm(c_in, c_out, kernel, stride=1, groups=1, act=None, eps=0.001, momentum=0.01) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=eps, momentum=momentum),
    ]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV3 block: expand, depthwise, squeeze-excitation, project; a skip at stride 1."""

    def __init__(self, c_in, kernel, expanded, c_out, se, activation, stride):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = [_conv_norm(c_in, expanded, 1, act=act)] if expanded != c_in else []
        layers.append(_conv_norm(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded, _make_divisible(expanded // 4)))
        layers.append(_conv_norm(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class _PooledClassifier(nn.Module):
    """torchvision's classifier layout: `features`, a global average pool, then `classifier`."""

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MobileNetV3(_PooledClassifier):
    """torchvision's mobilenet_v3_small at its own widths, with its init (`large`: mobilenet_v3_large)."""

    def __init__(self, classes=1000, large=False):
        super().__init__()
        settings, last, hidden = (MOBILENET_V3_LARGE, 960, 1280) if large else (MOBILENET_V3_SMALL, 576, 1024)
        self.features = nn.Sequential(
            _conv_norm(3, 16, 3, 2, act=nn.Hardswish),
            *(InvertedResidual(*setting) for setting in settings),
            _conv_norm(settings[-1][3], last, 1, act=nn.Hardswish),
        )
        self.classifier = nn.Sequential(
            nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(hidden, classes)
        )
        _mobilenet_init(self)


# torchvision's mobilenet_v2: (expand ratio, output, layers, stride); its norms keep PyTorch's defaults
MOBILENET_V2_NORM = {"eps": 1e-5, "momentum": 0.1}
MOBILENET_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidualV2(nn.Module):
    """torchvision's MobileNetV2 block: expand (ReLU6), depthwise 3x3 (ReLU6), linear projection; a skip at stride 1
    between equal widths."""

    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden, norm = c_in * expand, MOBILENET_V2_NORM
        layers = [_conv_norm(c_in, hidden, 1, act=nn.ReLU6, **norm)] if expand != 1 else []
        layers.append(_conv_norm(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6, **norm))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(_PooledClassifier):
    """torchvision's mobilenet_v2 (width 1.0) with its init: no squeeze-excitation, ReLU6, linear bottlenecks."""

    def __init__(self, classes=1000):
        super().__init__()
        blocks, c_in = [], 32
        for expand, c_out, n, stride in MOBILENET_V2:
            for i in range(n):
                blocks.append(InvertedResidualV2(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        norm = MOBILENET_V2_NORM
        self.features = nn.Sequential(
            _conv_norm(3, 32, 3, 2, act=nn.ReLU6, **norm), *blocks, _conv_norm(c_in, 1280, 1, act=nn.ReLU6, **norm)
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        _mobilenet_init(self)


# torchvision's efficientnet_b0: (expand ratio, kernel, stride, input, output, layers)
EFFICIENTNET_B0 = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth in its "row" mode: in training, drops a residual branch for whole samples."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1 - self.p) / (1 - self.p)


class EfficientMBConv(nn.Module):
    """torchvision's EfficientNet MBConv: expand, depthwise, squeeze-excitation (SiLU, sigmoid), project."""

    def __init__(self, c_in, c_out, kernel, stride, expand, drop):
        super().__init__()
        hidden = _make_divisible(c_in * expand)
        norm = {"eps": 1e-5, "momentum": 0.1}  # nn.BatchNorm2d's defaults, which EfficientNet-B0 keeps
        layers = [_conv_norm(c_in, hidden, 1, act=nn.SiLU, **norm)] if hidden != c_in else []
        layers += [
            _conv_norm(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU, **norm),
            SqueezeExcite(hidden, max(1, c_in // 4), nn.Sigmoid, nn.SiLU),
            _conv_norm(hidden, c_out, 1, **norm),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x):
        y = self.block(x)
        return self.stochastic_depth(y) + x if self.residual else y


class EfficientNetB0(_PooledClassifier):
    """torchvision's efficientnet_b0 at its own widths, with its init (stochastic depth 0.2 over the blocks)."""

    def __init__(self, classes=1000):
        super().__init__()
        norm = {"eps": 1e-5, "momentum": 0.1}
        blocks, total = [], sum(n for *_, n in EFFICIENTNET_B0)
        for expand, kernel, stride, c_in, c_out, n in EFFICIENTNET_B0:
            for i in range(n):
                drop = 0.2 * len(blocks) / total
                blocks.append(
                    EfficientMBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand, drop)
                )
        self.features = nn.Sequential(
            _conv_norm(3, 32, 3, 2, act=nn.SiLU, **norm), *blocks, _conv_norm(320, 1280, 1, act=nn.SiLU, **norm)
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        _mobilenet_init(self, efficient=True)


def _densenet_init(model: nn.Module) -> None:
    """torchvision's DenseNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


class DenseNetish(nn.Module):
    """torchvision's DenseNet: pre-activation dense layers concatenated, transitions, its init."""

    def __init__(self, growth=8, layers=(4, 4), c=16, classes=10, imagenet_stem=False):
        super().__init__()
        if imagenet_stem:  # torchvision's: a 7x7 stride-2 conv and a 3x3 stride-2 max pool
            self.stem = nn.Sequential(
                nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
        else:  # the zoo's 32x32 inputs
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks, self.transitions = nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(layers):
            self.blocks.append(nn.ModuleList(DenseLayer(c + j * growth, growth) for j in range(n)))
            c += n * growth
            if i < len(layers) - 1:
                self.transitions.append(
                    nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
                )
                c //= 2
        self.norm, self.classifier = nn.BatchNorm2d(c), nn.Linear(c, classes)
        _densenet_init(self)

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            feats = [x]
            for layer in block:
                feats.append(layer(torch.cat(feats, 1)))
            x = torch.cat(feats, 1)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        x = torch.relu(self.norm(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def DenseNet121(classes=1000) -> nn.Module:
    """torchvision's densenet121 at its own widths (growth 32, blocks 6-12-24-16, 64 initial features, its stem of
    a 7x7 stride-2 conv and a max pool), with its init."""
    return DenseNetish(32, (6, 12, 24, 16), 64, classes, imagenet_stem=True)


class VGGish(nn.Module):
    def __init__(self, conv_std: float | None = None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(128, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 10),
        )
        for m in self.modules():  # torchvision's VGG init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if conv_std is not None:
                    nn.init.normal_(m.weight, 0, conv_std)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c, layer_scale=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.pwconv1, self.act, self.pwconv2 = (
            nn.LayerNorm(c),
            nn.Linear(c, 4 * c),
            nn.GELU(),
            nn.Linear(4 * c, c),
        )
        self.gamma = nn.Parameter(torch.full((c,), layer_scale))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    """torchvision/timm ConvNeXt: patchify stem, LayerNorm, layer scale 1e-6, trunc_normal(0.02) init."""

    def __init__(self, c=32, blocks=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, 4), LayerNorm2d(c))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(c) for _ in range(blocks)])
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x)).mean((2, 3))
        return self.head(self.norm(x))


def _cnn(factory: Callable[[], nn.Module], size: int = 32) -> Callable:
    def build():
        torch.manual_seed(0)
        return factory().eval(), {"x": _image(size)}

    return build


class _Positional(nn.Module):
    """CNNs take one positional image; the zoo passes inputs by name."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _wrapped(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: _Positional(factory())


def default_mlp(depth: int = 12, width: int = 256) -> nn.Module:
    """PyTorch's default Linear init (kaiming_uniform a=sqrt(5): std 1/sqrt(3 fan_in)) with ReLU: the signal
    shrinks by x1/6 in K per layer."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


STOCK = [
    ZooModel("llama", _causal_lm("LlamaForCausalLM", "LlamaConfig"), family="decoder LLM"),
    ZooModel("llama_at_scale", llama_at_scale, family="decoder LLM"),
    ZooModel("mistral", _causal_lm("MistralForCausalLM", "MistralConfig"), family="decoder LLM"),
    ZooModel("qwen2", _causal_lm("Qwen2ForCausalLM", "Qwen2Config"), family="decoder LLM"),
    ZooModel("gemma", _causal_lm("GemmaForCausalLM", "GemmaConfig", head_dim=32), family="decoder LLM"),
    ZooModel("phi3", _causal_lm("Phi3ForCausalLM", "Phi3Config"), family="decoder LLM"),
    ZooModel("gpt2", gpt2(), family="decoder LLM"),
    ZooModel("gpt2_12", gpt2(layers=12), family="decoder LLM"),
    # at width 512 GPT-2's own init grows the stream x~70: its depth-scaled projections say it is by design
    ZooModel("gpt2_12_wide", gpt2(layers=12, width=512), family="decoder LLM"),
    ZooModel("bert", bert(), family="encoder"),
    ZooModel("roberta", roberta, family="encoder"),
    ZooModel("t5", t5, family="encoder-decoder"),
    ZooModel("vit", vit, family="vision transformer"),
    ZooModel("vit_at_scale", vit_at_scale, family="vision transformer", measured_at=(224, 8)),
    ZooModel("whisper_encoder", whisper_encoder, family="audio encoder"),
    ZooModel("mamba", mamba, family="state-space LM"),
    ZooModel("unet2d", unet2d, family="diffusion"),
    ZooModel("vae_decoder", vae_decoder, family="diffusion"),
    ZooModel("resnet50", _cnn(_wrapped(ResNet50ish)), family="CNN"),
    # torchvision's layouts at their own widths: the zoo's narrow ResNets have two blocks per stage, where a
    # post-activation stream's law barely shows; these have the depth and width of the checkpoints people train
    ZooModel(
        "resnet18_at_scale",
        _cnn(_wrapped(lambda: ResNet50ish(64, (2, 2, 2, 2), 1000, block=BasicBlock)), 64),
        family="CNN",
        measured_at=(224, 8),
    ),
    ZooModel(
        "resnet34_at_scale",
        _cnn(_wrapped(lambda: ResNet50ish(64, (3, 4, 6, 3), 1000, block=BasicBlock)), 64),
        family="CNN",
        measured_at=(224, 8),
    ),
    ZooModel(
        "resnet50_at_scale",
        _cnn(_wrapped(lambda: ResNet50ish(64, (3, 4, 6, 3), 1000)), 64),
        family="CNN",
        measured_at=(224, 8),
    ),
    ZooModel("resnet50_zero_init_residual", _cnn(_wrapped(lambda: ResNet50ish(zero_init_residual=True))), family="CNN"),
    ZooModel("mobilenetv3", _cnn(_wrapped(MobileNetV3ish)), family="CNN"),
    ZooModel("efficientnet", _cnn(_wrapped(lambda: MobileNetV3ish(efficient=True))), family="CNN"),
    ZooModel("mobilenetv3_small_at_scale", _cnn(_wrapped(MobileNetV3), 64), family="CNN", measured_at=(224, 8)),
    ZooModel(
        "mobilenetv3_large_at_scale",
        _cnn(_wrapped(lambda: MobileNetV3(large=True)), 64),
        family="CNN",
        measured_at=(224, 8),
    ),
    ZooModel("mobilenetv2_at_scale", _cnn(_wrapped(MobileNetV2), 64), family="CNN", measured_at=(224, 8)),
    ZooModel("efficientnet_b0_at_scale", _cnn(_wrapped(EfficientNetB0), 64), family="CNN", measured_at=(224, 8)),
    ZooModel("densenet", _cnn(_wrapped(DenseNetish)), family="CNN"),
    ZooModel("densenet121_at_scale", _cnn(_wrapped(DenseNet121), 64), family="CNN", measured_at=(224, 8)),
    ZooModel("vgg", _cnn(_wrapped(VGGish)), family="CNN"),
    ZooModel("convnext", _cnn(_wrapped(ConvNeXtish)), family="CNN"),
]

TWINS = [
    ZooModel(
        "gpt2_12_unscaled_residual",
        gpt2(layers=12, unscaled_residual=True),
        broken="IC516",
        severity="warning",
        family="decoder LLM",
    ),
    ZooModel(
        "gpt2_12_wide_unscaled_residual",
        gpt2(layers=12, unscaled_residual=True, width=512),
        broken="IC516",
        severity="warning",
        family="decoder LLM",
    ),
    ZooModel("llama_no_attention_scale", llama_without_attention_scale, broken="IC504", family="decoder LLM"),
    ZooModel("gpt2_tied_embedding_normal_1", gpt2(tied_std=1.0), broken="IC101", family="decoder LLM"),
    ZooModel("bert_linear_normal_1", bert(linear_std=1.0), broken="IC504", family="encoder"),
    ZooModel(
        "mlp_pytorch_default_init",
        lambda: (default_mlp().eval(), {"input": torch.randn(1, 256)}),
        broken="IC102",
        family="MLP",
    ),
    ZooModel("vgg_conv_normal_1", _cnn(_wrapped(lambda: VGGish(conv_std=1.0))), broken="IC101", family="CNN"),
    ZooModel("resnet50_all_gamma_zero", _cnn(_wrapped(lambda: ResNet50ish(gamma=0.0))), broken="IC102", family="CNN"),
]


class TensorOutputs(nn.Module):
    """Files store tensors: every tensor of a model's output (logits, T5's encoder state, BERT's pooled output), as
    the live module's analysis seeds each; the inputs come positionally (both ONNX exporters take them so, with
    input_names) or by name (torch.export keeps the names) and are passed on by name."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args, **named):
        leaves = _tensor_leaves(self.model(**dict(zip(self.names, args)), **named))
        return leaves[0] if len(leaves) == 1 else tuple(leaves)


def _tensor_leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    parts = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    return [leaf for part in parts for leaf in _tensor_leaves(part)]


def rows_by_layer(report, known: set[str] | None = None) -> dict[tuple[str, str], object]:
    """A report's predictions by (scope, op), where that pair is unique; a file's scopes without the export
    wrapper's leading 'model.' where that names one of `known` (the live module's scopes)."""
    counted: dict[tuple[str, str], list] = {}
    for row in report.layers:
        scope = row.scope or row.node
        if known is not None and scope.startswith("model.") and scope[6:] in known:
            scope = scope[6:]
        counted.setdefault((scope, row.op), []).append(row.symbolic)
    return {key: rows[0] for key, rows in counted.items() if len(rows) == 1}


def differing_rows(ours, theirs, rel: float) -> tuple[int, int, list[str]]:
    """Two reports of one model, rows paired by layer: (rows of ours, rows paired, the K or G that differ by more
    than `rel`)."""
    a = rows_by_layer(ours)
    b = rows_by_layer(theirs, {scope for scope, _ in a})
    paired = [key for key in a if key in b]
    differ = [
        f"{key} {which} {y:.5g} for {x:.5g}"
        for key in paired
        for which, x, y in (("K", a[key].K, b[key].K), ("G", a[key].G, b[key].G))
        if x is not None and y is not None and abs(y - x) > rel * abs(x) + 1e-12
    ]
    return len(a), len(paired), differ


def export_file(model: ZooModel, route: str, folder) -> tuple[object, dict | None]:
    """The model written by one route: 'pt2' (torch.export.save) or 'onnx-legacy' / 'onnx-dynamo'
    (torch.onnx.export). Returns (path, --input shapes for the analysis)."""
    import logging
    import warnings

    module, inputs = model.build()
    wrapped = TensorOutputs(module, list(inputs)).eval()
    args = tuple(inputs.values())
    path = folder / f"{model.name}.{route}.{'pt2' if route == 'pt2' else 'onnx'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if route == "pt2":
                # by name, as a user exports a HF model: the input names (attention_mask) reach the file
                torch.export.save(torch.export.export(wrapped, (), inputs, strict=False), str(path))
            else:
                torch.onnx.export(
                    wrapped,
                    args,
                    str(path),
                    dynamo=route == "onnx-dynamo",
                    input_names=list(inputs),
                    opset_version=None if route == "onnx-dynamo" else 17,
                )
        finally:
            logging.disable(logging.NOTSET)
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    return path, shapes
