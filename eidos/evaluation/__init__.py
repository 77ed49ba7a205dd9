"""Evaluation: feature statistics and the Fréchet distance (FID when the features are Inception-v3 pool3)."""

from eidos.evaluation.frechet import FeatureStatistics, frechet_distance

__all__ = ["FeatureStatistics", "frechet_distance"]
