"""Sampling: consistency (1, 2, N steps) and flow Euler solvers."""

from eidos.sampling.solvers import (
    consistency_times,
    flow_velocity,
    network_evaluations,
    sample_consistency,
    sample_flow_euler,
)

__all__ = ["consistency_times", "flow_velocity", "network_evaluations", "sample_consistency", "sample_flow_euler"]
