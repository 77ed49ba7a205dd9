"""Evaluation: feature extractors, the Fréchet distance (FID with Inception-v3 pool3 features), caption
alignment by nearest-neighbour captioning, and the report that `eidos eval` prints."""

from eidos.evaluation.alignment import caption_alignment
from eidos.evaluation.features import InceptionFeatures, PixelFeatures, load_feature_extractor
from eidos.evaluation.frechet import FeatureStatistics, frechet_distance
from eidos.evaluation.report import CaptionedImages, evaluate

__all__ = ["CaptionedImages", "FeatureStatistics", "InceptionFeatures", "PixelFeatures", "caption_alignment",
           "evaluate", "frechet_distance", "load_feature_extractor"]
