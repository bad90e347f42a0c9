"""Recurrent layers: per-step mean field of the hidden second moment and of the gradient through time
(docs/theory.md §10).

Weights enter through their statistics: per gate the recurrent gain H E[W_hh^2], the input gain n_in E[W_ih^2],
the input's fan-out gain H E[W_ih^2] and the bias moments. The forward pass iterates K_h (and K_c) step by step.
Backward, one step either keeps the gradient on the carry (the LSTM cell state through the forget gate f, the
GRU hidden state through the update gate z) or sends it through W_hh. The same W_hh at every step makes paths
with the same number of W_hh steps add coherently, as far as their factors are the gates' *means*; what the
gates add around their means, and the zero-mean paths (through the input, forget and reset gates), add as
incoherent noise, which restarts the coherence. So k steps back the energy is the renewal sum
    r(k) = c(k) + nu sum_{s=1..k} c(s-1) r(k-s),  c(k) = sum_m C(k,m)^2 carry_mean^2(k-m) coherent^m:
at one step the untied mean field (carry + mixing), far back it settles at (carry_mean + sqrt(coherent))^2 + nu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from initcheck import pointwise
from initcheck.gaussian import derivative, expect, moments_of
from initcheck.moments import clean
from initcheck.passes import upstream
from initcheck.rules.common import dim
from initcheck.rules.registry import backward_rule, forward_rule

_TANH = pointwise.as_function(pointwise.unary("tanh"))
_SIGMOID = pointwise.as_function(pointwise.unary("sigmoid"))
_RELU = pointwise.as_function(pointwise.unary("relu"))
_RECURRENT = ("rnn", "lstm", "gru")
_MAX_LAG = 1024  # r(k) is summed exactly up to here; beyond, it decays at its settled rate


@dataclass(frozen=True)
class _Gate:
    """Moments of one gate's output phi(a), a ~ N(bias mean, pre-activation second moment)."""

    mean: float
    second: float
    slope: float  # E[phi'(a)]
    slope_sq: float  # E[phi'(a)^2]


def _gate(fn, K_pre: float, bias_mean: float, kinks=()) -> _Gate:
    K = max(K_pre, bias_mean**2)
    mean, second, _, slope_sq = moments_of(fn, bias_mean, K, bias_mean**2, kinks)
    slope = expect(lambda z: derivative(fn, z), bias_mean, K - bias_mean**2, kinks)
    return _Gate(mean, second, slope, slope_sq)


@dataclass(frozen=True)
class CellState:
    """The mean field of one recurrent layer: K_h after each step and, at the last step, the gradient's per-step
    energy factors: carry (E[f^2] or E[z^2]; carry_mean = E[f] or E[z]), mixing (all paths through W_hh;
    coherent = the part made of the gates' means), the energy an output gradient injects into the carried state,
    the input's share of the carried state's gradient (drive) and of the output gradient itself (direct: the
    LSTM output gate, which only the step's own output reaches)."""

    history: list[float]
    carry: float
    carry_mean: float
    mixing: float
    coherent: float
    injection: float
    drive: float
    direct: float = 0.0

    def decay(self, steps: int) -> np.ndarray:
        """r(k) for k = 0 .. steps-1: gradient energy k steps back relative to the step it entered."""
        return np.exp(self.log_decay(steps))

    def log_decay(self, steps: int) -> np.ndarray:
        exact = max(2, min(steps, _MAX_LAG))
        log_r = _renewal(self.carry_mean**2, self.coherent, self.carry + self.mixing, exact)
        if steps > exact:
            tail = np.arange(1, steps - exact + 1) * math.log(max(self.rate_at(log_r), 1e-300))
            log_r = np.concatenate([log_r, log_r[-1] + tail])
        return log_r[:steps]

    @property
    def chi(self) -> float:
        """Per-step gradient energy factor far back in the sequence, where it settles."""
        return self.rate_at(_renewal(self.carry_mean**2, self.coherent, self.carry + self.mixing, 256))

    @staticmethod
    def rate_at(log_r: np.ndarray) -> float:
        far = len(log_r) // 2
        return math.exp((log_r[-1] - log_r[far]) / max(len(log_r) - 1 - far, 1))


def _log_factorials(n: int) -> np.ndarray:
    """log k! for k = 0 .. n-1."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n)))])


def _renewal(carry_sq: float, coherent: float, one_step: float, steps: int) -> np.ndarray:
    """log r(k), k < steps: coherent paths c(k) restarted by incoherent noise nu = one_step - carry_sq - coherent."""
    log_fact = _log_factorials(steps)
    log_c = np.full(steps, -np.inf)
    log_c[0] = 0.0
    a, b = _log(carry_sq), _log(coherent)
    for n in range(1, steps):
        m = np.arange(n + 1)
        terms = 2 * (log_fact[n] - log_fact[m] - log_fact[n - m]) + _times(n - m, a) + _times(m, b)
        log_c[n] = np.logaddexp.reduce(terms)
    nu = one_step - carry_sq - coherent
    if nu <= 1e-12 * max(one_step, 1e-300):
        return log_c
    log_nu, log_r = math.log(nu), np.empty(steps)
    for n in range(steps):
        # r(n) = c(n) + nu sum_{s=1..n} c(s-1) r(n-s)
        restarts = log_nu + log_c[:n] + log_r[n - 1 :: -1][:n] if n else np.array([-np.inf])
        log_r[n] = np.logaddexp(log_c[n], np.logaddexp.reduce(restarts))
    return log_r


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _times(count: np.ndarray, log_x: float) -> np.ndarray:
    """count * log_x with 0 * log(0) = 0 (a path with no step of that kind)."""
    if log_x == -math.inf:
        return np.where(count == 0, 0.0, -math.inf)
    return count * log_x


def _preactivation(gate: dict, K_x: float, K_h: float) -> float:
    return gate["in_gain"] * K_x + gate["rec_gain"] * K_h + gate["bias_sq"]


def run_mean_field(kind: str, gates: list[dict], K_x: float, steps: int, activation: str = "tanh") -> CellState:
    """The mean field over `steps` steps from h_0 = 0 (gates in ONNX order: LSTM i, o, f, c; GRU z, r, h); the
    gradient factors are those of the last step."""
    key = (kind, tuple(tuple(sorted(g.items())) for g in gates), float(K_x), int(steps), activation)
    return _mean_field(key)


@lru_cache(maxsize=256)
def _mean_field(key) -> CellState:
    kind, gate_items, K_x, steps, activation = key
    gates = [dict(items) for items in gate_items]
    K_h, K_c, history, factors = 0.0, 0.0, [], {}
    for _ in range(max(steps, 1)):
        factors, K_h, K_c = _STEPS[kind](gates, K_x, K_h, K_c, activation)
        history.append(K_h)
    if kind == "lstm":
        history, factors = _lstm_accumulated(gates, K_x, min(max(steps, 1), _MAX_LAG), K_h, K_c)
    return CellState(history, **factors)


def _lstm_accumulated(gates, K_x, steps, K_h, K_c) -> tuple[list[float], dict]:
    """The cell state sums what each step writes, i g, over past steps through the same carry-or-W_hh paths as
    the gradient: the white part of the write (from the input) with energy r(k) k steps later, the persistent
    part (each unit's own candidate bias) coherently, as (I - M)^-1 with M = E[f] + mean paths through W_hh.
    Solved as a fixed point in the state's second moments, starting from the step-by-step mean field (which
    keeps only the carry: 2-2.5x low at forget-gate bias 2-3)."""
    i_gate, o_gate, f_gate, c_gate = gates
    K_c_t = np.full(steps, K_c)
    for _ in range(12):
        factors, _, _ = _lstm_step(gates, K_x, K_h, K_c, "tanh")
        i = _gate(_SIGMOID, _preactivation(i_gate, K_x, K_h), i_gate["bias_mean"])
        pre_g = _preactivation(c_gate, K_x, K_h)
        g = _gate(_TANH, pre_g, c_gate["bias_mean"])
        spread = max(c_gate["bias_sq"] - c_gate["bias_mean"] ** 2, 0.0)  # the candidate biases' spread over units
        white = i.second * g.second * (pre_g - spread) / pre_g if pre_g > 0 else 0.0
        persistent = (i.mean * g.slope) ** 2 * spread
        r = np.exp(
            _renewal(factors["carry_mean"] ** 2, factors["coherent"], factors["carry"] + factors["mixing"], steps)
        )
        K_c_t = white * np.cumsum(r) + persistent * _coherent_sum(factors["carry_mean"], factors["coherent"], steps)
        K_c_new = float(K_c_t[-1])
        o = _gate(_SIGMOID, _preactivation(o_gate, K_x, K_h), o_gate["bias_mean"])
        K_h = o.second * _gate(_TANH, K_c_new, 0.0).second
        converged = abs(K_c_new - K_c) <= 1e-4 * max(K_c_new, 1e-30)
        K_c = 0.5 * (K_c + K_c_new)  # damped: the factors depend on the state
        if converged:
            break
    history = [o.second * _gate(_TANH, float(k), 0.0).second for k in K_c_t]
    factors, _, _ = _lstm_step(gates, K_x, K_h, K_c, "tanh")
    return history, factors


def _coherent_sum(carry_mean: float, coherent: float, steps: int) -> np.ndarray:
    """E|sum_{k<t} M^k b|^2 / |b|^2 for t = 1 .. steps, M = carry_mean + sqrt(coherent) U with U i.i.d.: powers of U
    are orthogonal on average, so it is sum_m coherent^m (sum_{k=m}^{t-1} C(k, m) carry_mean^(k-m))^2."""
    k = np.arange(steps)
    log_fact = _log_factorials(steps)
    m = k[:, None]
    log_terms = np.where(
        k[None, :] >= m,
        log_fact[k][None, :]
        - log_fact[m]
        - log_fact[np.maximum(k[None, :] - m, 0)]
        + _times(k[None, :] - m, _log(carry_mean)),
        -np.inf,
    )
    log_inner = np.logaddexp.accumulate(log_terms, axis=1)  # [m, t-1]
    return np.exp(np.logaddexp.reduce(_times(m, _log(coherent)) + 2 * log_inner, axis=0))


def _rnn_step(gates, K_x, K_h, K_c, activation):
    """h' = phi(W x + U h + b). No carry: every step goes through U (energy rec_gain E[phi'^2])."""
    g = gates[0]
    fn, kinks = (_RELU, (0.0,)) if activation == "relu" else (_TANH, ())
    out = _gate(fn, _preactivation(g, K_x, K_h), g["bias_mean"], kinks)
    factors = {
        "carry": 0.0,
        "carry_mean": 0.0,
        "mixing": g["rec_gain"] * out.slope_sq,
        "coherent": g["rec_gain"] * out.slope**2,
        "injection": 1.0,
        "drive": g["in_fan_out_gain"] * out.slope_sq,
    }
    return factors, out.second, 0.0


def _lstm_step(gates, K_x, K_h, K_c, activation):
    """c' = f c + i g, h' = o tanh(c'). The gradient's state is the cell state's total gradient: the hidden
    gradient enters it through o tanh'(c) (injection); one step back it passes f (carry) or goes through the
    gates' pre-activations and U to h and into c again (mixing; coherent through the candidate's mean slope)."""
    i_gate, o_gate, f_gate, c_gate = gates
    i, o, f = (_gate(_SIGMOID, _preactivation(g, K_x, K_h), g["bias_mean"]) for g in (i_gate, o_gate, f_gate))
    g = _gate(_TANH, _preactivation(c_gate, K_x, K_h), c_gate["bias_mean"])
    K_c_new = f.second * K_c + i.second * g.second
    cell = _gate(_TANH, K_c_new, 0.0)
    injection = o.second * cell.slope_sq  # dh -> dc
    # dc -> d(pre-activation) of each gate, per unit of the cell gradient's energy
    to_pre = {"c": i.second * g.slope_sq, "i": g.second * i.slope_sq, "f": K_c * f.slope_sq}
    gain = {"c": c_gate, "i": i_gate, "f": f_gate}
    factors = {
        "carry": f.second,
        "carry_mean": f.mean,
        "mixing": injection * sum(gain[k]["rec_gain"] * to_pre[k] for k in to_pre),
        "coherent": c_gate["rec_gain"] * (i.mean * g.slope * o.mean * cell.slope) ** 2,
        "injection": injection,
        "drive": sum(gain[k]["in_fan_out_gain"] * to_pre[k] for k in to_pre),
        "direct": o_gate["in_fan_out_gain"] * cell.second * o.slope_sq,  # dh -> output gate -> x, same step
    }
    return factors, o.second * cell.second, K_c_new


def _gru_step(gates, K_x, K_h, K_c, activation):
    """h' = (1 - z) n + z h, n = tanh(W_n x + r (U_n h + b_hn)). The carry is z; through U go the candidate
    (reset-gated; coherent through the gates' means), the update gate (h - n) and the reset gate paths."""
    z_gate, r_gate, n_gate = gates
    z = _gate(_SIGMOID, _preactivation(z_gate, K_x, K_h), z_gate["bias_mean"])
    r = _gate(_SIGMOID, _preactivation(r_gate, K_x, K_h), r_gate["bias_mean"])
    recurrent_n = n_gate["rec_gain"] * K_h
    n = _gate(_TANH, n_gate["in_gain"] * K_x + r.second * recurrent_n + n_gate["bias_sq"], n_gate["bias_mean"])
    one_minus_z_sq = 1 - 2 * z.mean + z.second
    to_n = one_minus_z_sq * n.slope_sq  # dh -> d(pre-activation of n)
    to_z = (K_h + n.second) * z.slope_sq  # dh -> d(pre-activation of z): (h - n) sigma'
    to_r = to_n * recurrent_n * r.slope_sq  # through n's pre-activation to r
    factors = {
        "carry": z.second,
        "carry_mean": z.mean,
        "mixing": n_gate["rec_gain"] * r.second * to_n + z_gate["rec_gain"] * to_z + r_gate["rec_gain"] * to_r,
        "coherent": n_gate["rec_gain"] * ((1 - z.mean) * n.slope * r.mean) ** 2,
        "injection": 1.0,
        "drive": n_gate["in_fan_out_gain"] * to_n + z_gate["in_fan_out_gain"] * to_z + r_gate["in_fan_out_gain"] * to_r,
    }
    return factors, one_minus_z_sq * n.second + z.second * K_h, 0.0


_STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def sequence_length(node) -> int:
    """Steps of a recurrent node's input (ONNX layout 1 and torch's batch_first put the batch first)."""
    return node.attrs.get("steps") or dim(node.inputs[0], node.attrs.get("layout", 0)) or 1


def cell_states(node, K_x: float, steps: int | None = None) -> list[CellState]:
    """The mean field of each direction of a recurrent node for an input of second moment K_x."""
    kind, activation = node.attrs["kind"], node.attrs.get("activation", "tanh")
    steps = steps or sequence_length(node)
    return [run_mean_field(kind, gates, K_x, steps, activation) for gates in node.params["directions"]]


@forward_rule(*_RECURRENT, approximate=True)
def recurrent_forward(node, ins, ctx):
    """Outputs: the hidden sequence (every direction), the last hidden state, the last cell state. The rule
    takes the input as independent from step to step; behind another recurrent layer it is not, and the row
    states how far that can move K: the carried state's gain for an input constant in time over its gain for
    white input (a range taken as two sigma)."""
    states = cell_states(node, ins[0].K)
    bar = max(_order_in_time_bar(s, sequence_length(node)) for s in states) if _after_recurrent(node) else 0.0
    extra = {"gaussian": False, "bar": bar}
    sequence = clean(0.0, float(np.mean([np.mean(s.history) for s in states])), 0.0, False, **extra)
    last = clean(0.0, float(np.mean([s.history[-1] for s in states])), 0.0, False, **extra)
    return [sequence, last, last][: len(node.outputs)]


def _after_recurrent(node) -> bool:
    """Does another recurrent layer feed this one (its input then varies slowly in time, not white)?"""
    return any(v.producer is not None and v.producer.op in _RECURRENT for v in upstream(node.inputs[0], 200))


def _order_in_time_bar(state: CellState, steps: int) -> float:
    steps = min(max(steps, 2), _MAX_LAG)
    white = float(np.sum(state.decay(steps)))
    constant = float(_coherent_sum(state.carry_mean, state.coherent, steps)[-1])
    return abs(math.log(max(constant, 1e-300) / max(white, 1e-300))) / 2


@backward_rule(*_RECURRENT)
def recurrent_backward(node, ins, outs, grads, ctx):
    """Input gradient, averaged over positions: a gradient entering at step t reaches step t - k with energy
    r(k); the sequence output's gradient enters at every step, the last states' only at the last one. Each
    direction's output holds its own share of the gradient, so the directions' input gradients add."""
    steps = sequence_length(node)
    lags = np.arange(steps)
    G = []
    for state in cell_states(node, ins[0].K):
        r = state.decay(steps)
        every_step = float(np.sum((steps - lags) * r)) / steps  # mean over t of sum_{k < T - t} r(k)
        last_only = float(np.sum(r)) / steps
        sequence, *last = (g or 0.0 for g in grads)
        entering = state.injection * (sequence * every_step + (last[0] if last else 0.0) * last_only)
        if len(last) > 1:  # the last cell state's gradient is already on the carried state
            entering += last[1] * last_only
        direct = state.direct * (sequence + (last[0] / steps if last else 0.0))  # the step's own output gate
        G.append(state.drive * entering + direct)
    return [float(np.sum(G))] + [None] * (len(ins) - 1)  # the input feeds every direction: gradients add
