"""Clinical text analyser: CheXpert-14 labels and anatomy-grounded key phrases from report text.

Pure Python and regular expressions, no model. Used by the ``rules`` labeler (clinical-efficacy
metrics) and by stage 3 of training (key phrases as auxiliary context).

>>> a = analyse("Small left pleural effusion. No pneumothorax.")
>>> a.labels["Pleural Effusion"], a.labels["Pneumothorax"]
(1, 0)
>>> [k.text for k in a.keyphrases]
['small left pleural effusion', 'no pneumothorax']
"""

from s2d_align.evaluation.analyser.analyse import (
    ANALYSER_VERSION,
    Analysis,
    KeyPhrase,
    aggregate,
    analyse,
    analyse_sentence,
)
from s2d_align.evaluation.analyser.mentions import Mention
from s2d_align.evaluation.analyser.sentences import (
    findings_text,
    normalise,
    split_sections,
    split_sentences,
)

__all__ = [
    "ANALYSER_VERSION",
    "Analysis",
    "KeyPhrase",
    "Mention",
    "aggregate",
    "analyse",
    "analyse_sentence",
    "findings_text",
    "normalise",
    "split_sections",
    "split_sentences",
]
