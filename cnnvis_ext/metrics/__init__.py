"""How far to trust a map or a picture: faithfulness, sanity checks and robustness of
attribution maps; transferability and plausibility of feature visualizations.

Functional and batched: device tensors in, device tensors out; every random draw comes from
per-image generators, so results are reproducible under ``seed`` and do not depend on the batch.
"""
from .faithfulness import (Curves, RegionPerturbation, auc, deletion_insertion,
                           faithfulness_correlation, region_perturbation)
from .feature_vis import Plausibility, plausibility, transferability
from .sanity import (Randomization, max_sensitivity, model_randomization, random_logit,
                     randomization_order, spearman, ssim)

__all__ = ["Curves", "RegionPerturbation", "auc", "deletion_insertion", "region_perturbation",
           "faithfulness_correlation", "Randomization", "model_randomization", "randomization_order",
           "random_logit",
           "max_sensitivity", "spearman", "ssim", "transferability", "plausibility",
           "Plausibility"]
