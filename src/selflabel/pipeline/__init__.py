"""The recipe and its entry points: teacher -> pseudo-labels -> student -> evaluation -> report, resumable."""

from selflabel.pipeline.commands import DEMO_COHORT, run_demo, train_on_dataset
from selflabel.pipeline.evaluation import evaluate_model
from selflabel.pipeline.recipe import Pipeline, model_names, run_recipe
from selflabel.pipeline.stages import Stage, StageRunner

__all__ = [
    "DEMO_COHORT",
    "Pipeline",
    "Stage",
    "StageRunner",
    "evaluate_model",
    "model_names",
    "run_demo",
    "run_recipe",
    "train_on_dataset",
]
