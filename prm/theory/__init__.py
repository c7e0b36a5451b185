"""Theory checks: the variance reduction of truncated (SLATE) vs full-trajectory sampling."""

from prm.theory.variance import (
    Estimate,
    MonteCarloResult,
    SchemeStatistics,
    SyntheticProcess,
    VarianceStatistics,
    advantage_variance_ratio,
    full_advantage_variance,
    monte_carlo,
    predict,
    signal_variances,
    step_variances,
    truncated_advantage_variance,
)

__all__ = [
    "Estimate",
    "MonteCarloResult",
    "SchemeStatistics",
    "SyntheticProcess",
    "VarianceStatistics",
    "advantage_variance_ratio",
    "full_advantage_variance",
    "monte_carlo",
    "predict",
    "signal_variances",
    "step_variances",
    "truncated_advantage_variance",
]
