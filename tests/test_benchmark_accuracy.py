"""The accuracy benchmark's reference: a model is measured again with more seeds until its measurement is sharper
than the 15% it judges (benchmarks/accuracy.py, docs/theory.md §14)."""

from types import SimpleNamespace

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def accuracy():
    return load_benchmark("accuracy")


def _report(bars):
    """A report whose rows measured G with these relative sampling errors (and one row without a gradient)."""
    rows = [SimpleNamespace(measured=SimpleNamespace(G=1.0, G_bar=b)) for b in bars]
    return SimpleNamespace(layers=rows + [SimpleNamespace(measured=SimpleNamespace(G=None, G_bar=0.5))])


@pytest.mark.parametrize(
    "p90, seeds",
    [
        (0.024, 8),  # DenseNet-121 at 224^2: sharp enough at 8
        (0.031, 16),  # just over: (0.031 / 0.03)^2 = 1.07, the next power of two
        (0.059, 32),  # MobileNetV3-small at 224^2: 3.9x the seeds
        (0.2, 64),  # capped
    ],
)
def test_a_model_is_measured_again_until_its_90th_percentile_row_is_sharp(accuracy, p90, seeds):
    bars = [0.01] * 90 + [p90] * 10  # the 90th-percentile row reads p90
    assert accuracy.seeds_for_precision(_report(bars), 8) == seeds
    if seeds > 8:  # its error at the seeds chosen (1/sqrt(seeds)) is within PRECISION
        assert p90 * (8 / seeds) ** 0.5 <= accuracy.PRECISION or seeds == accuracy.MAX_SEEDS


def test_the_draws_table_pools_every_models_rows(accuracy):
    """Over draws, a model with three times the rows weighs three times: 10 rows at 50% and 30 at 90% pool to 80%,
    where the models' plain mean would say 70%."""

    def result(model, draw, rows, share):
        return {"model": model, "draw": draw, "G": {"rows": rows, "within_15": share}}

    results = [result("small", 0, 10, 0.5), result("large", 0, 30, 0.9)]
    results += [result("small", 1, 10, 1.0), result("large", 1, 30, 0.8)]
    last = accuracy.draws_table(results).splitlines()[-1]
    assert last == "| all rows | 80.0% | 85.0% | 82.5% |"  # draw 1: (10 + 24) / 40; both: (5 + 27 + 10 + 24) / 80
