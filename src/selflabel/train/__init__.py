"""Training: the loop (`engine`) and validation on whole volumes (`validation`)."""

from selflabel.train.engine import TrainResult, make_optimizer, parameter_groups, poly_lr, train_model
from selflabel.train.validation import is_improvement, selection_score, summarize_validation, validate_cases

__all__ = [
    "TrainResult",
    "is_improvement",
    "make_optimizer",
    "parameter_groups",
    "poly_lr",
    "selection_score",
    "summarize_validation",
    "train_model",
    "validate_cases",
]
