"""The state the symbolic pass propagates (docs/theory.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from initcheck.limits import MAX_PROFILE_LENGTH


@dataclass(frozen=True)
class AxisProfile:
    """Relative energy (mean 1) at each index of one axis of a tensor (non-negative axis number)."""

    axis: int
    energy: np.ndarray
    # relative variance over the batch at each index (K - M), where a concatenation knows it: a train-mode batch
    # norm divides each channel by that, not by K (parts with channel offsets differ)
    centered: np.ndarray | None = None
    # a matrix's gradient profiled along its rows (axis, the second to last): the relative energy along its
    # columns (the last), where both vary (a causal attention's logits: queries and keys)
    across: np.ndarray | None = None

    def __eq__(self, other) -> bool:  # arrays compare by value
        return (
            isinstance(other, AxisProfile)
            and self.axis == other.axis
            and np.array_equal(self.energy, other.energy)
            and _same_array(self.centered, other.centered)
            and _same_array(self.across, other.across)
        )

    def __hash__(self) -> int:
        return hash((self.axis, self.energy.tobytes()))

    def __len__(self) -> int:
        return len(self.energy)


@dataclass(frozen=True, eq=False)
class EntryLaw:
    """How one entry lies about its mean where it is not Gaussian, in units of its standard deviation (mean 0,
    variance 1): a mixture of Gaussians of one `width` centred at `centers` with probabilities `weights`. Width 0
    is a set of atoms (an activation's output); a positive width is such entries plus an independent Gaussian (a
    residual sum: a post-activation ResNet's stream, docs/theory.md §4)."""

    centers: np.ndarray
    weights: np.ndarray
    width: float = 0.0
    # an activation's output: inflow[k, b] is the probability that an entry of the input law's component k lands
    # on atom b, times phi'^2 there. The gradient an atom receives goes back to the components it came from
    inflow: np.ndarray | None = None

    def __eq__(self, other) -> bool:  # arrays compare by value
        return (
            isinstance(other, EntryLaw)
            and self.width == other.width
            and np.array_equal(self.centers, other.centers)
            and np.array_equal(self.weights, other.weights)
            and _same_array(self.inflow, other.inflow)
        )

    def __hash__(self) -> int:
        return hash((self.width, self.centers.tobytes(), self.weights.tobytes()))


@dataclass(frozen=True, eq=False)
class MeanPattern:
    """How a feature map's channel means vary over its positions: their covariance between positions (P x P,
    the positions flattened; its trace / P is the energy), averaged over the channels (docs/theory.md §17)."""

    cov: np.ndarray

    @property
    def energy(self) -> float:
        return float(np.trace(self.cov)) / max(len(self.cov), 1)


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def profile_along(axis: int, energy) -> AxisProfile | None:
    """A normalised profile, or None where it is flat, empty, too long or not finite."""
    energy = np.asarray(energy, dtype=np.float64)
    if energy.size < 2 or energy.size > MAX_PROFILE_LENGTH or not np.all(np.isfinite(energy)):
        return None
    mean = energy.mean()
    if mean <= 0:
        return None
    energy = energy / mean
    if np.allclose(energy, 1.0, rtol=0, atol=1e-3):
        return None
    return AxisProfile(axis, energy)


@dataclass(frozen=True)
class Moments:
    """Forward statistics of one tensor.

    m: mean; K: second moment E[z^2]; M: coherent energy mean_c (E_{batch,space} z_c)^2, m^2 <= M <= K.
    exact: False downstream of anything approximated or unsupported.
    profile: per spatial axis, the relative K at each position (mean 1) created by zero padding (§2).
    valid_keys: for attention logits, the number of unmasked keys per query row (causal masks).
    simplex: rows sum to one (softmax output), which the attention-output rule needs.
    gaussian: entries are close to Gaussian (sums over many inputs); elementwise rules on a
      non-Gaussian input are approximations (docs/theory.md §4, "Gaussian closure").
    phases: per output phase K of an up-sampling op (checkerboard, §3), None elsewhere.
    spread: predicted CV^2 of K across weight draws at this width (finite width, §12); the rules
      are exact in expectation, a single network deviates by about sqrt(spread).
    cross: E[x_a^2 x_b^2] / K^2 - 1 for two different inputs a, b (the cross-input 4-point vertex
      that the next weighted layer turns into spread).
    S: the energy of the part shared by all positions (tokens, pixels) of one sample, per channel:
      mean_c E_sample (mean over positions of z_c)^2, M <= S <= K. Ops that mix positions create it (attention
      averages values over tokens, pooling broadcasts); it is what survives the next attention average
      (docs/theory.md §9). None: no more than the batch-coherent part, S = M.
    positive: for a tensor whose entries are all >= 0 (a ReLU's output, sums and pools of such), the share of
      entries > 0; None otherwise. A ReLU after it is the identity forward and passes that share of the gradient
      (autograd's ReLU' is 0 at 0), which a Gaussian closure would not see (a zero-initialised residual branch
      leaves relu(relu(x))).
    rectified: (share, offset) where that share of the entries is an affine map of relu(offset + g), g ~ N(0, 1):
      a ReLU's output of a Gaussian, and batch norms, copies and channel concatenations of it (DenseNet's
      pre-activation layers read them). An activation there is not a function of a Gaussian (docs/theory.md §4).
    centred: per spatial axis, the relative K of the entries less their channel's mean over the batch and the map,
      where a conv's zero padding made its channel offsets uneven over the map (§2): what a train-mode batch norm
      after it outputs. None: as `profile`.
    law: the entries' distribution where a sum made it neither Gaussian nor rectified (a ReLU's output plus a
      Gaussian branch, and what activations make of that: a post-activation ResNet's residual stream), §4. The
      activation rule takes its moments over it. None: Gaussian, or `rectified` says the shape.
    axial: the relative K at each index of one axis where it varies there (tokens of a sequence, the parts of a
      channel concatenation), docs/theory.md §15; None where even.
    dispersion: (axis, rho) where the variance of each index of that axis about its own mean (a channel's, over the
      batch and space) differs across the indices: rho is its relative variance over them. A layer's rows of
      unequal energy and correlated input channels make it (an instance's weights, not the ensemble). A
      per-channel norm divides each channel by its own variance, so its gradient grows by E[v/v_c] = 1/(1 - rho)
      (docs/theory.md §17). None: even.
    overlap: (axis, 1/r) with r = tr(C)^2 / tr(C^2) for the covariance C between the indices of that axis (the
      channels): how many vary independently. Layers with fewer inputs than outputs and the layers after them
      leave channels correlated, which makes the next layer's channel variances uneven (§17). None: independent.
    pattern: how the channel means vary over a feature map (each position's batch mean less the channel's mean over
      the map: part of K - M), as their covariance between positions: zero padding makes it (a conv's offsets sum
      fewer taps at the border) and later layers carry it. Few degrees of freedom per channel, it makes the
      channels' variances uneven (docs/theory.md §17). None: even, or a map beyond 16x16 positions.
    mean_profile: per spatial axis, the relative mean at each position (mean 1) where `profile` varies: an
      activation's mean follows its input's spread (a ReLU's as its square root, a SiLU's nearly as its energy), a
      max pool's its windows' energy and size, and a padded conv after it sums the taps' means over the map with
      these weights; a norm after it removes each channel's average of them, not the rest (§2, §7). Read only beside
      `profile`; None: even.
    neighbours: per spatial axis, the correlation at lags 1..4 of the entries less their channel's mean, where
      neighbouring positions co-vary (overlapping max-pool windows make it, convs carry it at their stride); an
      average pool keeps more of the variance than independent positions would (§7). None: independent.
    units: the known part of each channel's mean where the layer that made the value has few output units (a
      squeeze-excitation's 4-64): m S_k + b_k from its own row sums and biases. The rest of the channel offsets
      (M less their mean square) is taken as Gaussian; an activation takes its moments unit by unit (docs/theory.md
      §4). None: the offsets are taken as Gaussian across the channels.
    bar: a stated error of K (natural-log units, 1 sigma) that a rule knows its approximation has here, beyond
      the calibrated bar of approximate rows (a stacked recurrent layer whose input's order in time is not
      modeled, §10); carried downstream as the largest upstream bar.
    """

    m: float
    K: float
    M: float
    exact: bool = True
    profile: tuple[np.ndarray, ...] | None = None
    valid_keys: np.ndarray | None = None
    simplex: bool = False
    gaussian: bool = True
    phases: tuple[float, ...] | None = None
    spread: float = 0.0
    cross: float = 0.0
    S: float | None = None
    bar: float = 0.0
    axial: AxisProfile | None = None
    positive: float | None = None
    rectified: tuple[float, float] | None = None
    law: EntryLaw | None = None
    centred: tuple[np.ndarray, ...] | None = None
    dispersion: tuple[int, float] | None = None
    overlap: tuple[int, float] | None = None
    pattern: MeanPattern | None = None
    mean_profile: tuple[np.ndarray, ...] | None = None
    neighbours: tuple[np.ndarray, ...] | None = None
    units: tuple[float, ...] | None = None

    @property
    def shared(self) -> float:
        """S, or M where nothing made positions share more than the batch does."""
        return self.M if self.S is None else self.S

    @property
    def var(self) -> float:
        return max(self.K - self.m * self.m, 0.0)

    def approx(self) -> Moments:
        return replace(self, exact=False)

    def with_(self, **changes) -> Moments:
        return replace(self, **changes)


@dataclass(frozen=True)
class Estimate:
    """One value's statistics as either interpretation gives them: the symbolic pass predicts them, the probe
    measures them, and both return `dict[value name, Estimate]`, so a row holds one of each and their agreement
    is computed the same way for every row.

    m: mean; K: second moment E[z^2]; G: gradient second moment per element (unit-variance cotangent at every
    output), None where no gradient reaches the value.
    K_bar: the relative 1-sigma error bar of K (natural-log units). A prediction's combines the expected
      instance-to-instance deviation at this width (sqrt of the finite-width CV^2, docs/theory.md §12) with, on
      approximate rows, the approximations' calibrated bar; a measurement's is its standard error over the runs.
    exact / grad_exact: a prediction exact in expectation (False downstream of an approximated or unsupported
      op); measurements are exact.
    G_bar: the relative 1-sigma error bar of G, as K_bar is of K: a prediction's combines the finite-width spread
      with, on approximate gradients, their calibrated bar; a measurement's is its standard error over the runs.
    """

    m: float
    K: float
    G: float | None = None
    K_bar: float = 0.0
    exact: bool = True
    grad_exact: bool = True
    G_bar: float = 0.0


def clean(m: float, K: float, M: float, exact: bool = True, S: float | None = None, **extra) -> Moments:
    """Build Moments, enforcing m^2 <= M <= S <= K against rounding."""
    K = max(float(K), 0.0)
    m2 = float(m) ** 2 if abs(float(m)) < 1e150 else float("inf")  # Python floats raise on overflow; moments go to inf
    M = min(max(float(M), m2), K)
    shared = None if S is None else min(max(float(S), M), K)
    return Moments(float(m), K, M, bool(exact), S=shared, **extra)


def standard_input() -> Moments:
    """The default network input: independent N(0, 1) entries."""
    return Moments(0.0, 1.0, 0.0)


def profile_factor(profile: tuple[np.ndarray, ...] | None) -> float:
    if not profile:
        return 1.0
    return float(np.prod([p.mean() if p.size else 1.0 for p in profile]))


def normalize_profile(profile: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, ...] | None:
    if not profile:
        return None
    out = []
    for p in profile:
        mean = p.mean() if p.size else 1.0
        out.append(p / mean if mean > 0 else np.ones_like(p))
    if all(np.allclose(p, 1.0, atol=1e-9) for p in out):
        return None
    return tuple(out)
