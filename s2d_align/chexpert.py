"""The 14 CheXpert observations and label conventions shared by data, evaluation and models."""

from __future__ import annotations

from typing import Final

#: Order used everywhere (label vectors, CE tables, CheXbert heads).
OBSERVATIONS: Final[tuple[str, ...]] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

#: The 5-observation subset used by CheXpert's competition tasks and many RRG papers.
FIVE_OBSERVATIONS: Final[tuple[str, ...]] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

# Label values: 1 positive, 0 negative, -1 uncertain, None blank (not mentioned).
POSITIVE: Final = 1
NEGATIVE: Final = 0
UNCERTAIN: Final = -1
BLANK: Final = None
