"""The paper's analyses (section 3.3, Appendix A.2-A.3) as pure functions over run folders,
arrays and state dicts, plus plotly figure builders (`sdlora.analysis.figures`).

Each analysis of a run is computed once and kept in the run folder (``analyses/``), so reopening
it is instant; `cached` does that.
"""
from .core import (
    absorption_table,
    accuracy_matrix_frame,
    accuracy_table,
    cached,
    efficiency,
    interpolate,
    magnitude_series,
    magnitudes_at_task_end,
    relative_distances,
    residual_series,
    residuals_at_task_end,
    seed_groups,
    stored,
    table5_row,
    task_identity_matrix,
    task_specific_weights,
    within_task_accuracy,
)
from .theory import matrix_factorisation_dynamics
from .tradeoff import stability_plasticity, tradeoff_point
from .landscape import toy_landscape
from .plane import path_plane, plane_coordinates

__all__ = [
    "absorption_table",
    "accuracy_matrix_frame",
    "accuracy_table",
    "cached",
    "efficiency",
    "interpolate",
    "magnitude_series",
    "magnitudes_at_task_end",
    "matrix_factorisation_dynamics",
    "path_plane",
    "plane_coordinates",
    "relative_distances",
    "residual_series",
    "residuals_at_task_end",
    "seed_groups",
    "stability_plasticity",
    "stored",
    "table5_row",
    "task_identity_matrix",
    "task_specific_weights",
    "toy_landscape",
    "tradeoff_point",
]
