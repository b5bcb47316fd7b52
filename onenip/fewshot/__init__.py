"""Few-shot generalist mode (InCTRL): train once on auxiliary categories, onboard a new category from
k normal images with no training.

Training draws balanced batches: normal queries (fit normals) and anomalous ones (fresh synthetic
anomalies every epoch, plus the auxiliary categories' real test anomalies when
``generalist.real_anomalies`` allows it); each query gets k prompts from its own category's fit normals,
never itself nor the image its anomaly was made from. Onboarding picks the k prompts deterministically
(the typical image, then k-center greedy), chooses the residual (InCTRL's, or PatchCore's neighbourhood
distance against the prompts, or against the prompts and their half turns) and how much the holistic
head counts in the image score on the category's other normal training images plus synthetic anomalies
made on them, calibrates the threshold on those normals (never on test), and evaluates on its labelled
test images when there are any.
"""

from onenip.fewshot.train import GeneralistResult, draw_prompts, generalist_params, stack_prompts, train_generalist, validate_generalist
from onenip.fewshot.selection import ValidationScores, apply_selection, candidate_scores, choose_scoring, evenly_spaced, family_aurocs, pick_scoring, rotated_prompt_features, scoring_candidates, validation_scores
from onenip.fewshot.onboard import OnboardResult, Onboarding, onboard_category, onboarding_geometry, prepare_onboarding, prompt_table

__all__ = [
    "GeneralistResult",
    "OnboardResult",
    "Onboarding",
    "ValidationScores",
    "apply_selection",
    "candidate_scores",
    "choose_scoring",
    "draw_prompts",
    "evenly_spaced",
    "family_aurocs",
    "generalist_params",
    "onboard_category",
    "onboarding_geometry",
    "pick_scoring",
    "prepare_onboarding",
    "prompt_table",
    "rotated_prompt_features",
    "scoring_candidates",
    "stack_prompts",
    "train_generalist",
    "validate_generalist",
    "validation_scores",
]
