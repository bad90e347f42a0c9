"""The finding codes: what each means, its formula, its fix, and its thresholds, in one place.

`initcheck explain CODE` and `initcheck rules` print these; every code has exactly one registered check that
emits it (`initcheck.checks.registry`, asserted at import). Checks read their thresholds with `limit(code, name)`:
the defaults below, or a config's `thresholds` table for the current analysis (a context variable, so concurrent
analyses with different configs do not see each other's values). Unknown codes or names in a config are
configuration errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    code: str
    name: str
    severity: str  # default severity at the error threshold
    summary: str
    formula: str
    fix: str
    thresholds: str  # the thresholds in words
    limits: Mapping[str, float] = field(default_factory=dict)  # the thresholds' default values, by name


CODES: dict[str, Code] = {}


def _code(
    code: str,
    name: str,
    severity: str,
    summary: str,
    formula: str,
    fix: str,
    thresholds: str,
    limits: Mapping[str, float] | None = None,
) -> None:
    c = Code(code, name, severity, summary, formula, fix, thresholds, dict(limits or {}))
    CODES[c.code] = c


_code(
    "IC101",
    "forward-signal-explodes",
    "error",
    "The forward second moment grows by orders of magnitude from the nearest normalisation (or the input).",
    "F_l = log10(K_l / K_ref); per weighted layer K_out = fan_in E[W^2] (K_in - m^2) + m^2 R + E[b^2] (docs/theory.md §2), "
    "per activation K_out = <phi^2>_(m,K) (§4).",
    "Initialise each weight with std = g / sqrt(fan_in), where g = <phi^2>_1^(-1/2) for the activation that follows "
    "(ReLU sqrt(2), tanh 1.59, GELU 1.53, linear 1); the finding names the factor to apply to the worst layer.",
    "|F| >= 1 decade: warning; >= 2 decades: error. Info only when every path from the layer meets a normalisation "
    "(its scale then matters only through epsilon), e.g. pre-LN residual streams.",
    limits={"warning": 1.0, "error": 2.0},  # decades of K growth from the reference
)
_code(
    "IC102",
    "forward-signal-vanishes",
    "error",
    "The forward second moment shrinks by orders of magnitude: later layers see almost no signal, and a "
    "normalisation's epsilon or fp16 underflow will swallow it.",
    "Same as IC101 with F_l < 0. PyTorch's default Linear/Conv init (kaiming_uniform, a=sqrt(5)) has gain 1/3, "
    "1/6 after ReLU: -0.78 decades per layer.",
    "Same as IC101: std = g / sqrt(fan_in) for the activation that follows (He init for ReLU).",
    "F <= -1 decade: warning; <= -2 decades: error. An output region (logit layer or short classifier after the "
    "last pooling/norm) that starts small by itself: info (the loss starts near ln(classes), as zero/N(0, 0.02) "
    "heads intend). A normalisation with scale 0 on the main path: error.",
    limits={"warning": 1.0, "error": 2.0},
)
_code(
    "IC111",
    "gradient-explodes",
    "error",
    "The gradient second moment grows by orders of magnitude from the outputs back to this layer.",
    "Backward with G = 1 at the outputs: linear G_x = fan_out E[W^2] G_y; activation G_x = <phi'^2> G_y "
    "(docs/theory.md §2, §4). B_l = log10(E_l / E_ref) with E = G * numel, the gradient energy per sample: at criticality "
    "it is preserved through width changes, strided convs, max pooling and up-sampling (B is the product of chi_perp); "
    "E_ref is the nearest downstream output, normalisation or averaging op, which change E by design.",
    "Choose weight stds with chi_perp = C_W <phi'^2> = 1 per layer (ReLU: He init); add normalisation; "
    "scale residual branches (docs/theory.md §5).",
    "B >= 1 decade: warning; >= 3 decades (approaching fp16 range limits): error.",
    limits={"warning": 1.0, "error": 3.0},  # decades of gradient energy
)
_code(
    "IC112",
    "gradient-vanishes",
    "error",
    "The gradient reaching early layers is orders of magnitude smaller than at the outputs: they will barely train.",
    "Same as IC111 with B_l < 0.",
    "Same as IC111; for saturating activations (tanh, sigmoid) keep pre-activations O(1).",
    "B <= -1 decade: warning; <= -3 decades: error.",
    limits={"warning": 1.0, "error": 3.0},
)
_code(
    "IC201",
    "non-finite-weights",
    "error",
    "A weight, bias or normalisation parameter contains NaN or Inf: every output it touches is NaN.",
    "count(!isfinite(W)) > 0",
    "Re-initialise the tensor; check the checkpoint for corruption or a diverged run.",
    "Any NaN/Inf entry: error.",
)
_code(
    "IC202",
    "constant-weights",
    "warning",
    "Every entry of a weight matrix is the same: all units compute the same function and the symmetry is "
    "never broken (non-zero), or no signal passes at all (zero).",
    "min(W) == max(W)",
    "Use a random init (e.g. std = g / sqrt(fan_in)); an all-zero last layer of a residual branch is a deliberate "
    "choice (it starts the block as the identity) and can be ignored.",
    "Constant non-zero weight matrix: error; all-zero: warning; all-zero at a residual branch's end or in the "
    "output layer (zero_init_residual, ViT/MLP-Mixer heads), or a norm with scale 0 ending a branch: info.",
)
_code(
    "IC301",
    "unsupported-op",
    "warning",
    "An op on the signal path has no rule: its input moments are passed through unchanged and every number "
    "downstream of it is an approximation.",
    "-",
    "Run the empirical probe for measured numbers, or export the op in its decomposed form.",
    "Any unsupported op on the signal path: warning.",
)
_code(
    "IC302",
    "internal-error",
    "warning",
    "initcheck's own rule or translation for an op raised an exception: a bug in initcheck, not a property of the "
    "model. The op's moments are passed through unchanged, so every number downstream of it is an approximation.",
    "-",
    "Report it with the output of `initcheck analyze ... --debug` (the traceback); meanwhile the empirical probe "
    "gives measured numbers for the layers after it.",
    "Any op whose rule or translation failed: warning.",
)
_code(
    "IC401",
    "symbolic-empirical-mismatch",
    "warning",
    "The probe's measured second moment differs from the prediction beyond the row's stated error bar. On a "
    "row the pass models exactly, the model breaks one of its assumptions (two branches that are the same "
    "tensor, weights correlated with their inputs, structured weights on correlated inputs); on an approximate "
    "row, an approximation upstream is off by more than its calibrated bar. Rows whose bar is wider than 2x "
    "(the ensemble value says little about this instance) are not judged: the table marks them.",
    "|ln(K_sym / K_meas)| > ln 1.15 + 3 sqrt(bar^2 + SE_probe^2), bar^2 = spread^2 (finite width) + "
    "approximation_bar^2 on approximate rows (docs/theory.md §12-13); likewise G with gradient_bar",
    "Trust the measured numbers for this layer and downstream; look for the correlation the pass cannot see.",
    "Any judged layer beyond the bound: warning, once per model (the first layer, with the count); a gradient "
    "beyond its own bound (G against gradient_bar, calibrated on the zoo; its tails are heavy): information.",
    # K_sym / K_meas beyond this factor (plus 3 bars) disagrees; the bar of an approximate row (natural-log units,
    # calibrated on the zoo: benchmarks/accuracy.py), of an approximate gradient (the zoo's rms |ln G_sym/G_meas|
    # over the 2,711 approximate gradients of every model but Mamba is 0.127, its 95th percentile 0.25: 0.15 puts
    # the bound at 1.8x, so a gradient 2x off is said, and 0.6% of those rows beyond it); bars beyond
    # `uninformative` (a factor) are not judged
    limits={"tolerance": 1.15, "approximation_bar": 0.1, "gradient_bar": 0.15, "uninformative": 2.0},
)
_code(
    "IC402",
    "probe-cross-check-failed",
    "error",
    "For ONNX models the gradients come from a torch form of the graph; its forward values differ from "
    "onnxruntime's, so the measured gradients cannot be trusted.",
    "relative L2 difference of any intermediate > 1e-3",
    "Report the op named in the finding; analyse the PyTorch model, or use --no-probe.",
    "Above 1e-3: error.",
    limits={"error": 1e-3},  # relative L2 difference, torch form vs onnxruntime
)
_code(
    "IC403",
    "probe-failed",
    "warning",
    "The empirical probe could not run the model (an op the runtime rejects, an input it cannot build); the "
    "symbolic results are reported alone.",
    "-",
    "Check the named op or input; --no-probe skips the probe.",
    "Any probe failure: warning.",
)
_code(
    "IC501",
    "checkerboard-upsampling",
    "error",
    "A transposed convolution gives its output phases unequal second moments: the network starts by painting a "
    "checkerboard, which training must first undo.",
    "per phase r: K_r = v sum_{t in T_r} E_t + m^2 S_r + b2 with the actual per-tap energies E_t (docs/theory.md §3); "
    "ratio max_r K_r / min_r K_r (k=3, s=2: 4; k=4, s=2: 1).",
    "Kernel divisible by the stride (k=4 for s=2), resize-then-conv, or phase-balanced taps; rescaling to the average "
    "fan-in fixes the mean gain, not the pattern.",
    "ratio >= 1.5: warning; >= 2 or a phase without taps: error (random-init noise gives 1.05-1.5).",
    limits={"warning": 1.5, "error": 2.0},  # per-phase K ratio
)
_code(
    "IC502",
    "unscaled-residual-stream",
    "warning",
    "Residual blocks y = x + f(x) add the branch's energy every block: K and the gradient grow like Pi(1 + g_l).",
    "K_y = K_x + K_f = K_x (1 + g), g = K_f / K_x; G_x = G_y (1 + chi_f) (docs/theory.md §5).",
    "(x + f(x)) / sqrt(1 + g), a branch scale alpha with alpha^2 g = 1/L, zero-init of f's last layer, or a norm.",
    "K grows >= 1.9x per block in >= 4 blocks: warning.",
    limits={"growth": 1.9, "blocks": 4},
)
_code(
    "IC503",
    "over-corrected-residual",
    "warning",
    "A residual stream whose scaling over-corrects: K shrinks every block (e.g. /sqrt(2) with g = 1/2: 0.75^L).",
    "per block K_y / K_x = s^2 (1 + g) < 1 for the applied scale s (docs/theory.md §5).",
    "Use s = 1/sqrt(1 + g) for the actual branch gain g.",
    "K shrinks to <= 0.9x per block in >= 4 blocks: warning.",
    limits={"shrink": 0.9, "blocks": 4},
)
_code(
    "IC504",
    "attention-logit-scale",
    "error",
    "Attention logits q k^T are too spread within a row: the softmax starts saturated and its gradient is small.",
    "E[s^2] = c^2 d_k E[q^2] E[k^2]; within-row std sigma; softmax statistics for N keys (docs/theory.md §9).",
    "Scale logits by 1/sqrt(d_k) if missing, else by 1/sigma (or q and k weights by 1/sqrt(sigma) each).",
    "sigma >= 2: warning (H/ln N <= 0.78); >= 4 or a missing 1/sqrt(d_k): error.",
    limits={"warning": 2.0, "error": 4.0},  # within-row logit std
)
_code(
    "IC505",
    "depth-to-width",
    "warning",
    "The network is deep for its width: one initialisation's output second moment differs from another's by a "
    "large factor (finite-width fluctuations); typical networks lose signal although the ensemble mean is kept.",
    "V^(l+1) = chi_par^2 V^(l) + (cross-input 4-point excess)/n; CV^2 = V/(n K^2) ~ 5 (L-1)/n for ReLU, (2/3) L/n for "
    "critical tanh (docs/theory.md §12); log-normal beyond leading order.",
    "Widen, make shallower, or reset the spread with normalisation / scaled residuals.",
    "CV^2 >= 0.5: warning ('deep for its width'); >= 1: 'overly deep'.",
    limits={"warning": 0.5, "overly_deep": 1.0},  # CV^2 of the last hidden K
)
_code(
    "IC506",
    "recurrent-gradient-decay",
    "warning",
    "A recurrent layer's gradient shrinks (or grows) by orders of magnitude over the sequence at init.",
    "gradient energy k steps back r(k): per step it stays on the carry (LSTM E[f^2], GRU E[z^2]) or goes through "
    "W_hh; paths with as many W_hh steps add coherently through the gates' means, so r(1) = carry + mixing and far "
    "back chi ~ (E[f] + sqrt(coherent))^2 + noise (docs/theory.md §10); over T steps r(T-1).",
    "Orthogonal W_hh, forget/update-gate bias >= 1 (chrono init), shorter truncation.",
    "r(T-1) < 1e-2 or > 1e2: warning; LSTM forget bias < 1: info.",
    limits={"low": 1e-2, "high": 1e2},  # r(T-1): gradient energy from the last step back to the first
)
_code(
    "IC507",
    "dropout-train-eval-scale",
    "warning",
    "Inverted dropout scales K by 1/(1-p) in training mode only: train and eval scales drift apart along a chain "
    "of dropout layers.",
    "train: K_y = K_x / (1-p), G_x = G_y / (1-p); eval: identity (docs/theory.md §8).",
    "Expected with inverted dropout; compensating the init by (1-p) fixes training mode and shrinks eval mode by "
    "(1-p)^L instead; a normalisation after dropout-heavy blocks removes the difference.",
    "any dropout on the path: info; train/eval factor >= 4: warning.",
    limits={"info": 1.0, "warning": 4.0},  # train/eval K factor
)
_code(
    "IC508",
    "unscaled-branch-sum",
    "warning",
    "N parallel branches of one input are summed without scaling (Inception/multi-branch blocks): K grows by the "
    "sum of the branch gains, ~N for balanced branches, and every branch receives the full gradient of the sum.",
    "K_y = sum_i K_i for branches with independent zero-mean last layers; block gain sum_i g_i, g_i = K_i / K_x "
    "(docs/theory.md §5; zero-padding borders lower each g_i, §2).",
    "Scale the sum by 1/sqrt(sum_i g_i) (1/sqrt(N) for balanced branches) or each branch by its own gain; forward "
    "K and the gradient into every branch change by the same factor squared, in both modes.",
    ">= 3 branches and K >= 1.9x both across the block and at the sum itself: warning.",
    limits={"growth": 1.9, "branches": 3},
)
_code(
    "IC509",
    "concat-fan-in",
    "warning",
    "A conv or linear layer reads a concatenation (U-Net skip): the merge changes the fan-in the init was computed "
    "for, so forward and backward gains shift differently; parts of very different scale let one drown the other.",
    "forward gain fan_in E[W^2], backward gain per input element (C_out k^2 / s^2) E[W^2]; Glorot recomputed for "
    "a 2c -> c merge: 4c/(2c+c_out) = 4/3 forward, 2c_out/(2c+c_out) = 2/3 backward; 2c -> 2c: 1 and 1 (docs/theory.md §5).",
    "Weights x 1/sqrt(forward gain) keep the signal, x 1/sqrt(backward gain) keep the gradient, x (fwd*bwd)^(-1/4) "
    "balances both; normalise each part before the concat when their K differ.",
    "forward or backward gain off by >= 1.25x: info; parts' K differing >= 4x: warning.",
    limits={"gain": 1.25, "imbalance": 4.0},
)
_code(
    "IC510",
    "nonzero-mean-weights",
    "warning",
    "A weight matrix has a clear mean: every row sum carries fan_in * mean, so all units share one component and "
    "an input mean is amplified; the units start nearly identical.",
    "common share mu_W^2 / E[W^2] of the output energy (zero-mean input); mean path m_x^2 R with R = mean_c S_c^2 "
    "= fan_in E[W^2] x amplification (docs/theory.md §1-2: 61x the naive rule for all-positive weights).",
    "Subtract the mean from the weights, or re-initialise zero-mean with the same std.",
    "mu_W^2 / E[W^2] >= 0.2: warning.",
    limits={"common_share": 0.2},
)
_code(
    "IC511",
    "dominant-bias",
    "warning",
    "A layer's bias carries most of its output's second moment: the output is nearly the same for every input.",
    "share = E[b^2] / K_y, K_y = fan_in E[W^2] (K_x - m^2) + m^2 R + 2 m Sb + E[b^2] (docs/theory.md §2).",
    "Zero-init or shrink the bias (the fix gives the factor for 10% of K); if the input signal has vanished, fix that.",
    "share >= 0.5: warning.",
    limits={"share": 0.5},
)
_code(
    "IC512",
    "off-critical-chain",
    "warning",
    "A plain chain of activation layers is off criticality: chi_perp per layer compounds into vanishing (ordered "
    "phase, distinct inputs converge) or exploding (chaotic phase, nearby inputs decorrelate) gradients.",
    "chi_perp = C_W <phi'^2>_K, chi_par = C_W d<phi^2>/dK with C_W = fan_in E[W^2] of the layer each activation "
    "feeds; Pi chi_perp over the chain (docs/theory.md §4). Critical (C_b, C_W): ReLU (0, 2), tanh (0, 1) as K -> 0, GELU "
    "(0.173, 1.983), SiLU (0.555, 1.988); none for sigmoid, softplus, ELU, SELU.",
    "Scale the weights by sqrt(C_W* / C_W), C_W* = 1 / <phi'^2>_K; or normalise.",
    ">= 3 activations in the chain and |log10 Pi chi_perp| >= 1: warning.",
    limits={"decades": 1.0, "layers": 3},
)
_code(
    "IC513",
    "input-correlation-collapse",
    "warning",
    "Different inputs' pre-activations become almost perfectly correlated along a chain: at init the network maps "
    "every input to nearly the same representation, and gradients barely depend on the input.",
    "rho = M / K of the pre-activation (the kernel map: E over the shared component of <phi>^2, docs/theory.md §1, §4); "
    "ReLU at criticality: rho -> 1 with 1 - rho ~ 1/L^2; biases speed it up.",
    "Zero-init biases, fewer layers per normalisation, residual connections or normalisation.",
    "rho >= 0.95 after rising >= 0.2 along a chain of >= 3 activations: warning.",
    limits={"rho": 0.95, "rise": 0.2},
)
_code(
    "IC514",
    "subpixel-without-icnr",
    "info",
    "A conv feeding PixelShuffle/DepthToSpace has independent sub-pixel kernels: the r^2 sub-pixels of each block "
    "are uncorrelated, so even a constant input comes out as a random periodic pattern.",
    "coherence = mean cosine between the r^2 sub-pixel kernels of a block = the correlation of the block's sub-pixels "
    "for a white input; ICNR gives 1, a random init ~0 (docs/theory.md §3).",
    "ICNR: one kernel per output channel copied to every sub-pixel position (= conv + nearest up-sampling at init).",
    "coherence < 0.5: info.",
    limits={"coherence": 0.5},
)
_code(
    "IC515",
    "strided-gradient-checkerboard",
    "warning",
    "A strided conv whose kernel is not divisible by its stride sends its gradient back with a per-phase pattern "
    "(or none at all to some positions when k < s), and no other path evens it out.",
    "G_x,r = G_y sum_{t in T_r} E_t on the input grid, T_r = taps of phase r (docs/theory.md §3): k=3, s=2: 4; k=1, s=2: "
    "3/4 of the positions get no gradient. Judged where no other path merges (a fork sums the phase grids).",
    "Kernel divisible by the stride, or blur/pool then a stride-1 conv.",
    "ratio >= 1.5: info; >= 3 or positions without gradient: warning (k=3, s=2 gives 2, as in every ResNet stem).",
    limits={"info": 1.5, "warning": 3.0},  # k=3 s=2 (ratio 2) is in every ResNet and Whisper stem: not a defect
)
_code(
    "IC516",
    "norm-placement",
    "warning",
    "Where a transformer stack normalises: Pre-LN streams grow linearly with depth (harmless when every branch and "
    "the output read them through a normalisation); Post-LN resets K every block but scales the gradient by "
    "(1 + chi_f)/(1 + g) per block, which compounds toward the input.",
    "Pre-LN: K_l = K_0 + c l, G_0/G_L = K_L/K_0 for matched branches; Post-LN: per block (1 + chi_f)/(1 + g) "
    "(docs/theory.md §5).",
    "Pre-LN: a final normalisation after the last block; growth of a decade or more: scale every branch's last "
    "layer by 1/sqrt(growth - 1) (GPT-2: std/sqrt(2 x layers)); Post-LN: Pre-LN placement, DeepNorm "
    "(alpha = (2N)^(1/4)), or warm-up.",
    "Pre-LN: info; warning when the stream grows >= 1 decade or nothing normalises its end; Post-LN: info, "
    "warning when the gradient changes >= 1 decade over the stack.",
    limits={"decades": 1.0},
)
_code(
    "IC517",
    "graph-attention-degree",
    "warning",
    "Graph attention (GAT) logits act(u_i + w_j) spread only through the neighbour part: the max logit grows with "
    "the degree, so high-degree nodes attend relatively sharper (d p_max grows) while p_max itself falls.",
    "sigma_w^2 = |W^T a_2|^2 K_h within a row; d E p_max = E_u[e^act(u + sigma_w e_d) / E_w e^act(u + w)], e_d = "
    "expected max of d Gaussians (Glorot: 1.6, 4.1, 8.4 at d = 4, 64, 1024; docs/theory.md §9).",
    "Scale each node's logits by e_ref / e_d (ref 16): sharpness becomes nearly degree-independent (2.0-3.3).",
    "info with the numbers; warning when the sharpness differs >= 3x between the graph's smallest and largest "
    "degree (known degrees only; --degree for graphs that do not carry them).",
    limits={"spread": 3.0},
)


# the thresholds a config may set: {code: {name: default}}
DEFAULTS: dict[str, dict[str, float]] = {c.code: dict(c.limits) for c in CODES.values() if c.limits}

_OVERRIDES: ContextVar[dict[str, dict[str, float]] | None] = ContextVar("initcheck_thresholds", default=None)


def limit(code: str, name: str) -> float:
    return (_OVERRIDES.get() or {}).get(code, {}).get(name, DEFAULTS[code][name])


@contextmanager
def overridden(overrides: dict[str, dict[str, float]] | None) -> Iterator[None]:
    token = _OVERRIDES.set(overrides or {})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)
