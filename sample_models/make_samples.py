"""Regenerate the sample models deterministically: `python sample_models/make_samples.py`.

Each sample is small (< 1 MB), exported with torch's legacy ONNX exporter (deterministic output), and
documents what initcheck should say about it (EXPECTED, also used by the tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_samples  # noqa: E402  (the issue-5 check samples live beside this file)

# sample -> finding codes it must raise at warning/error level (healthy samples: none)
EXPECTED: dict[str, set[str]] = {
    # K ~ 1/(2l) and chi_perp < 1: both directions fade; the chain is ordered (IC512) though C_W sits at tanh's
    # critical value 1: criticality is reached only as K -> 0
    "tanh_mlp_glorot": {"IC102", "IC112", "IC512"},
    # He init keeps the mean; at depth 16, width 96 a single ReLU network still deviates by ~+-90% (CV^2 ~ 0.8)
    "relu_mlp_he": {"IC505"},
    # half the He variance: chi_perp = 1/2 per layer (ordered, IC512), x1/2 per layer forward and backward
    "relu_mlp_glorot": {"IC102", "IC112", "IC505", "IC512"},
    "residual_mlp": {"IC101", "IC111", "IC502"},  # unscaled x + f(x) with g = 1: 2^L both ways
    "unet_block": set(),
    "dcgan_generator": {"IC501"},  # ConvTranspose k=3, s=2: per-phase K ratio ~4 (checkerboard)
    "prenorm_transformer": set(),
    # torch's default U(+-1/sqrt(H)) LSTM init: hidden state std ~0.1 for unit inputs; forget bias ~0: the cell
    # forgets within ~1 step, so the gradient over 12 steps vanishes
    # (the read-out's default bias then carries most of its output: IC511)
    "lstm": {"IC102", "IC506", "IC511"},
    **check_samples.EXPECTED,
}
INFO: dict[str, set[str]] = {**check_samples.INFO}  # info-level codes a sample must raise


def mlp(depth: int, width: int, act: nn.Module, init) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        init(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, act]
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """y = x + f(x) with a He-initialised Linear-ReLU-Linear branch and no scaling: K doubles per block."""

    def __init__(self, blocks: int = 12, width: int = 64):
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            a, b = nn.Linear(width, width), nn.Linear(width, width)
            nn.init.kaiming_normal_(a.weight, nonlinearity="relu")
            nn.init.kaiming_normal_(b.weight, nonlinearity="linear")
            nn.init.zeros_(a.bias)
            nn.init.zeros_(b.bias)
            self.blocks.append(nn.Sequential(a, nn.ReLU(), b))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


def he_conv(conv: nn.Module, nonlinearity: str = "relu") -> nn.Module:
    nn.init.kaiming_normal_(conv.weight, nonlinearity=nonlinearity)
    nn.init.zeros_(conv.bias)
    return conv


class UNetBlock(nn.Module):
    """Encoder conv, strided down-conv, up-sampling conv, skip concat, merge conv (He init)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.enc = he_conv(nn.Conv2d(3, c, 3, padding=1))
        self.down = he_conv(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1))
        self.up = he_conv(nn.Conv2d(2 * c, c, 3, padding=1))
        self.merge = he_conv(nn.Conv2d(2 * c, c, 3, padding=1))
        self.head = he_conv(nn.Conv2d(c, 1, 1), "linear")

    def forward(self, x):
        e = torch.relu(self.enc(x))
        d = torch.relu(self.down(e))
        u = torch.relu(self.up(nn.functional.interpolate(d, scale_factor=2.0, mode="nearest")))
        m = torch.relu(self.merge(torch.cat([e, u], dim=1)))
        return self.head(m)


class DCGANGenerator(nn.Module):
    """Latent -> Linear -> 3 x [ConvTranspose2d(k=3, s=2) + BatchNorm + ReLU] -> tanh (PyTorch default init)."""

    def __init__(self, z: int = 32, c: int = 32):
        super().__init__()
        self.c = c
        self.project = nn.Linear(z, c * 4 * 4)
        self.ups = nn.ModuleList()
        for cin, cout in ((c, c), (c, c // 2), (c // 2, c // 4)):
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                )
            )
        self.out = nn.Conv2d(c // 4, 3, 3, padding=1)

    def forward(self, z):
        x = self.project(z).view(-1, self.c, 4, 4)
        for up in self.ups:
            x = up(x)
        return torch.tanh(self.out(x))


class PreLNBlock(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)); attention written out (q k^T / sqrt(d_k), softmax, v)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for lin in (self.q, self.k, self.v, self.o, self.fc1, self.fc2):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x):
        h = self.ln1(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + self.o(y)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class PreLNTransformer(nn.Module):
    """Token embedding + learned positions, pre-LN blocks, final LN."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, layers: int = 2, seq: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.blocks = nn.ModuleList(PreLNBlock(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.embed(ids) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class LSTMModel(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden)
        self.head = nn.Linear(hidden, 8)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y)


TRAINING_MODE = {"dcgan_generator"}  # exported as it trains: batch norm with batch statistics


def samples() -> dict[str, tuple[nn.Module, tuple, list[str]]]:
    torch.manual_seed(0)
    return {
        "tanh_mlp_glorot": (mlp(16, 96, nn.Tanh(), nn.init.xavier_normal_), (torch.randn(1, 96),), ["x"]),
        "relu_mlp_he": (
            mlp(16, 96, nn.ReLU(), lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
            (torch.randn(1, 96),),
            ["x"],
        ),
        "relu_mlp_glorot": (mlp(16, 96, nn.ReLU(), nn.init.xavier_normal_), (torch.randn(1, 96),), ["x"]),
        "residual_mlp": (ResidualMLP(), (torch.randn(1, 64),), ["x"]),
        "unet_block": (UNetBlock(), (torch.randn(1, 3, 16, 16),), ["image"]),
        "dcgan_generator": (DCGANGenerator(), (torch.randn(4, 32),), ["z"]),
        "prenorm_transformer": (PreLNTransformer(), (torch.randint(0, 100, (1, 16)),), ["input_ids"]),
        "lstm": (LSTMModel(), (torch.randn(12, 1, 16),), ["x"]),
        **check_samples.samples(),
    }


def export(name: str, model: nn.Module, args: tuple, input_names: list[str], folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    training = name in TRAINING_MODE
    model.train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=["output"],
            opset_version=17,
            training=mode,
            do_constant_folding=not training,
        )
    return path


def main(folder: Path = HERE) -> None:
    for name, (model, args, names) in samples().items():
        path = export(name, model, args, names, folder)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
