"""Inference: report generation from a finished run folder (a split, or new images).

Layering: :mod:`~s2d_align.inference.passes` (sharded passes, the generation loop) and
:mod:`~s2d_align.inference.keyphrase_prediction` (key-phrase head probabilities, thresholds)
are primitives that the training recipe (``training.pipeline``) also runs, for its evaluation
during training and its threshold tuning. They sit above training's data primitives (dataset,
collate, prompts, processes, key-phrase vocabulary) and below the recipe. No inference module
imports a training module that imports inference (today only ``training.pipeline`` does), so
there is no import cycle. The run-level modules (``generate``, ``diagnostics``,
``keyphrase_eval``) also read what training wrote in a run folder.
"""
