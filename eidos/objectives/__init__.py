"""Objectives: the path convention, time sampling, flow matching, consistency (FACM), MAE, the total loss."""

from eidos.objectives.facm import FACMObjective, guided_velocity
from eidos.objectives.path import conditional_velocity, interpolate
from eidos.objectives.time_sampling import sample_times

__all__ = ["FACMObjective", "guided_velocity", "conditional_velocity", "interpolate", "sample_times"]
