"""Streaming statistics per value, accumulated on the tensor's device in float64 and synced once.

Nothing here keeps an activation: each tensor updates a handful of sums and is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measured:
    """What the probe measured for one value (None where it did not apply)."""

    mean: float
    K: float
    M: float
    K_se: float  # relative standard error of K over the runs
    G: float | None = None
    G_se: float = 0.0  # relative standard error of G over the runs
    dead_fraction: float | None = None  # ReLU-family: units <= 0 on the whole batch
    saturation: float | None = None  # tanh/sigmoid-family: entries in the flat tails
    cosine: float | None = None  # mean cosine similarity between different samples' outputs
    phases: list[float] | None = None  # K per output phase after up-sampling


def channel_axis(ndim: int) -> int:
    """The axis M is taken over (as in the symbolic pass): channels of NC(D)HW maps, else the last axis."""
    return 1 if ndim in (4, 5) else ndim - 1


_SUMS = 11  # the per-value sums kept on the device (see _Slot.sums)


def _relative_se(total: float, squares: float, runs: int) -> float:
    """The relative standard error of a mean over runs from the sum and sum of squares of the per-run values."""
    if runs < 2 or total <= 0:
        return 0.0
    mean = total / runs
    return (max(squares / runs - mean * mean, 0.0) / (runs - 1)) ** 0.5 / mean


@dataclass
class _Slot:
    """Device tensors for one value: runs, sum, sum of squares, per-run K sums, channel sums, gradient sums."""

    count: int = 0
    runs: int = 0
    grad_count: int = 0
    grad_runs: int = 0
    sums: Any = None  # a torch tensor: [sum, sum_sq, sum_K, sum_K2, grad_sq, dead_sum, sat_sum, cos_sum, extras_runs, sum_G, sum_G2]
    channels: Any = None  # per-channel sums
    channel_count: int = 0
    phases: Any = None


@dataclass
class Accumulator:
    kinds: dict[str, str] = field(default_factory=dict)  # value name -> "relu" | "tanh" | "sigmoid"
    batch: int | None = None  # samples per run: per-sample statistics only where the leading axis is this
    phase_grids: dict[str, tuple[int, int]] = field(default_factory=dict)  # value -> (s_h, s_w)
    slots: dict[str, _Slot] = field(default_factory=dict)

    def forward(self, name: str, tensor) -> None:
        """Per-tensor reductions in float32 (BLAS-speed; ~1e-6 relative), accumulated across runs in float64."""
        import torch

        x = tensor.detach()
        if not x.is_floating_point() or x.numel() == 0:
            return
        if x.dtype != torch.float32:
            x = x.float()
        slot = self.slots.setdefault(name, _Slot())
        if slot.sums is None:
            slot.sums = torch.zeros(_SUMS, dtype=torch.float64, device=x.device)
        flat = x.reshape(-1)
        total, squares = flat.sum(), torch.dot(flat, flat)
        k = squares / flat.numel()
        zero = torch.zeros((), device=x.device)
        dead = sat = cos = zero
        # dead units and cross-sample cosine need the sample axis; a flattened (batch * tokens, features) is not it
        batch = x.shape[0] if x.ndim > 1 and x.shape[0] == self.batch else 1
        kind = self.kinds.get(name, "")
        if kind == "relu" and batch > 1:
            dead = (x.reshape(batch, -1).amax(dim=0) <= 0).float().mean()  # 8x faster than a boolean all()
        elif kind == "tanh":
            sat = (x.abs() > 0.99).float().mean()
        elif kind == "sigmoid":
            sat = ((x < 0.01) | (x > 0.99)).float().mean()
        if batch > 1:
            rows = x.reshape(batch, -1)
            gram = rows @ rows.T
            norms = gram.diagonal().clamp_min(1e-30).sqrt()
            cosines = gram / norms[:, None] / norms[None, :]
            cos = (cosines.sum() - cosines.diagonal().sum()) / (batch * (batch - 1))
        slot.sums[:9] += torch.stack([total, squares, k, k * k, zero, dead, sat, cos, torch.ones_like(k)]).double()
        slot.count += flat.numel()
        slot.runs += 1
        axis = channel_axis(x.ndim) if x.ndim > 1 else 0
        dims = tuple(d for d in range(x.ndim) if d != axis)
        sums = (x.sum(dim=dims) if dims else x).double()
        slot.channels = sums if slot.channels is None or slot.channels.shape != sums.shape else slot.channels + sums
        slot.channel_count += flat.numel() // max(sums.numel(), 1)
        grid = self.phase_grids.get(name)
        if grid and x.ndim == 4:
            sh, sw = grid
            energy = torch.stack([x[:, :, i::sh, j::sw].pow(2).mean() for i in range(sh) for j in range(sw)]).double()
            slot.phases = energy if slot.phases is None else slot.phases + energy

    def backward(self, name: str, grad) -> None:
        import torch

        if grad is None:
            return
        slot = self.slots.setdefault(name, _Slot())
        g = grad.detach().reshape(-1)
        if g.dtype != torch.float32:
            g = g.float()
        if slot.sums is None:
            slot.sums = torch.zeros(_SUMS, dtype=torch.float64, device=g.device)
        squares = torch.dot(g, g).double()
        per_run = squares / max(g.numel(), 1)
        slot.sums[4] += squares
        slot.sums[9] += per_run
        slot.sums[10] += per_run * per_run
        slot.grad_count += g.numel()
        slot.grad_runs += 1

    def results(self) -> dict[str, Measured]:
        """Everything in one device-to-host copy."""
        import torch

        names = [n for n, s in self.slots.items() if s.sums is not None and s.count]
        if not names:
            return {}
        parts, sizes = [], []
        for n in names:
            slot = self.slots[n]
            pieces = [slot.sums, slot.channels] + ([slot.phases] if slot.phases is not None else [])
            sizes.append([p.numel() for p in pieces])
            parts.extend(pieces)
        flat = torch.cat([p.to(parts[0].device).reshape(-1) for p in parts]).cpu().tolist()  # scalars are 0-d
        out, offset = {}, 0
        for name, lengths in zip(names, sizes):
            chunks = []
            for length in lengths:
                chunks.append(flat[offset : offset + length])
                offset += length
            out[name] = self._finish(name, *chunks)
        return out

    def _finish(self, name: str, sums: list, channels: list, phases: list | None = None) -> Measured:
        slot = self.slots[name]
        total, total_sq, sum_k, sum_k2, grad_sq, dead, sat, cos, runs_with_extras, sum_g, sum_g2 = sums
        runs = max(slot.runs, 1)
        mean_k = sum_k / runs
        var_k = max(sum_k2 / runs - mean_k**2, 0.0) / max(runs - 1, 1)
        per_channel = [c / max(slot.channel_count, 1) for c in channels]
        kind = self.kinds.get(name, "")
        return Measured(
            mean=total / slot.count,
            K=total_sq / slot.count,
            M=sum(c * c for c in per_channel) / max(len(per_channel), 1),
            K_se=(var_k**0.5 / mean_k) if mean_k > 0 else 0.0,
            G=grad_sq / slot.grad_count if slot.grad_count else None,
            G_se=_relative_se(sum_g, sum_g2, slot.grad_runs),
            dead_fraction=dead / runs if kind == "relu" else None,
            saturation=sat / runs if kind in ("tanh", "sigmoid") else None,
            cosine=cos / runs if runs_with_extras else None,
            phases=[p / runs for p in phases] if phases else None,
        )
