"""Parallelism applied to a GPT from outside: `parallelize` (tensor and sequence parallelism) and
`pipeline_stage` (one stage of a pipeline) rewrite a model in place, keeping its parameter names;
a tensor-parallel pipeline stage is parallelize(pipeline_stage(model, stage, stages), group)."""

from gptcore.parallel.pipeline import pipeline_stage
from gptcore.parallel.tensor_parallel import parallelize

__all__ = ["parallelize", "pipeline_stage"]
