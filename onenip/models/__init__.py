"""OneNIP model components (torch layer: plain ``nn.Module``s, no training glue)."""

from onenip.models.backbone import (
    BACKBONE_WEIGHTS,
    BackboneWeights,
    BackboneWeightsError,
    FeatureExtractor,
    build_feature_extractor,
    create_classifier,
    load_pretrained_state_dict,
    weight_file,
)

__all__ = [
    "BACKBONE_WEIGHTS",
    "BackboneWeights",
    "BackboneWeightsError",
    "FeatureExtractor",
    "build_feature_extractor",
    "create_classifier",
    "load_pretrained_state_dict",
    "weight_file",
]
