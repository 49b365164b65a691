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
    SectionCounts,
    aggregate,
    analyse,
    analyse_sentence,
    count_sections,
)
from s2d_align.evaluation.analyser.mentions import Mention
from s2d_align.evaluation.analyser.sections import (
    DROPPED_SECTIONS,
    SectionSelection,
    findings_text,
    select_sections,
    split_sections,
)
from s2d_align.evaluation.analyser.sentences import normalise, split_sentences

__all__ = [
    "ANALYSER_VERSION",
    "DROPPED_SECTIONS",
    "Analysis",
    "KeyPhrase",
    "Mention",
    "SectionCounts",
    "SectionSelection",
    "aggregate",
    "analyse",
    "analyse_sentence",
    "count_sections",
    "findings_text",
    "normalise",
    "select_sections",
    "split_sections",
    "split_sentences",
]
