"""Evaluation profiles: R2Gen's cleaning quirks pinned one by one, raw-v1 left untouched.

Expected strings were worked out by hand from R2Gen's ``modules/tokenizers.py`` rules.
"""

from __future__ import annotations

import pytest

from s2d_align.errors import ConfigError
from s2d_align.evaluation.profiles import (
    R2GEN_SETTINGS,
    clean_report_iu_xray,
    clean_report_mimic_cxr,
    get_profile,
    r2gen_reference_tokens,
)

BOTH = pytest.mark.parametrize("clean", [clean_report_iu_xray, clean_report_mimic_cxr])


@BOTH
def test_lowercases_and_turns_full_stops_into_tokens(clean):
    assert clean("The Heart is NORMAL. Lungs clear.") == "the heart is normal . lungs clear ."


@BOTH
def test_strips_punctuation_inside_sentences(clean):
    assert clean("Heart size normal, lungs clear (no effusion); no PTX!") == (
        "heart size normal lungs clear no effusion no ptx ."
    )


@BOTH
def test_character_range_quirk_deletes_comparison_signs_but_keeps_hyphens(clean):
    # ":-\[" in R2Gen's class is the range ':'..'[': it removes < = > @ yet never '-'
    assert clean("x-ray <5 mm> a=b @c") == "x-ray 5 mm ab c ."


@BOTH
def test_quotes_slashes_and_apostrophes_vanish_without_a_space(clean):
    assert clean('The patient\'s "old" and/or back\\slash') == "the patients old andor backslash ."


@BOTH
def test_decimal_point_survives_the_split_then_loses_its_dot(clean):
    assert clean("Nodule measures 2.5 cm. Stable.") == "nodule measures 25 cm . stable ."


@BOTH
def test_every_1_dot_space_is_deleted_even_inside_a_number(clean):
    assert clean("Old fracture of rib 11. The heart is normal.") == (
        "old fracture of rib 1the heart is normal ."
    )


@BOTH
def test_numbered_lists_are_flattened(clean):
    assert clean("1. No effusion. 2. No pneumothorax. 3. Heart normal.") == (
        "no effusion . no pneumothorax . heart normal ."
    )


@BOTH
def test_empty_sentences_are_kept_as_extra_full_stops(clean):
    assert clean("Heart normal. . Lungs clear.") == "heart normal .  . lungs clear ."


def test_double_dots_are_collapsed_a_fixed_number_of_times():
    # 9 dots -> 5 -> 3 -> 2 after IU's three passes, so "1.. " escapes the "1. " deletion;
    # MIMIC's eight passes reach a single dot and then delete "1. " with it
    assert clean_report_iu_xray("Rib 1......... Fracture.") == "rib 1 . fracture ."
    assert clean_report_mimic_cxr("Rib 1......... Fracture.") == "rib fracture ."
    assert clean_report_iu_xray("Effusion.. Lungs clear.") == "effusion . lungs clear ."


def test_iu_keeps_newlines_mimic_turns_them_into_spaces():
    # IU leaves "\n" inside the sentence (whitespace splitting later hides it); MIMIC replaces it
    assert clean_report_iu_xray("heart\nnormal. lungs") == "heart\nnormal . lungs ."
    assert clean_report_mimic_cxr("heart\nnormal. lungs") == "heart normal . lungs ."


def test_mimic_deidentification_underscores_disappear():
    assert clean_report_mimic_cxr("Compared to ___ study. No change.") == (
        "compared to  study . no change ."
    )


def test_iu_deidentification_xxxx_is_kept_lowercased():
    assert clean_report_iu_xray("XXXX sternotomy wires.") == "xxxx sternotomy wires ."


def test_references_are_truncated_to_max_seq_length_minus_the_bos_slot():
    settings = R2GEN_SETTINGS["iu_xray"]
    assert settings.max_seq_length == 60
    report = ". ".join(["Small effusion"] * 40)  # 40 x (2 words + 1 full stop) = 120 tokens
    tokens = r2gen_reference_tokens(report, settings)
    assert len(tokens) == 59  # ids = [bos] + tokens + [eos], cut to 60, decoded from index 1
    assert tokens[:4] == ["small", "effusion", ".", "small"]
    assert tokens[-1] == "effusion"  # the cut is blind to sentence ends
    assert R2GEN_SETTINGS["mimic_cxr"].max_seq_length == 100
    assert len(r2gen_reference_tokens(report, R2GEN_SETTINGS["mimic_cxr"])) == 99


def test_profile_truncates_references_but_not_predictions():
    profile = get_profile("r2gen-legacy", dataset="iu_xray")
    long = " ".join(["effusion"] * 100) + "."
    assert len(profile.references({"a": long})["a"].split()) == 59
    assert len(profile.predictions({"a": long})["a"].split()) == 101


def test_unk_mapping_from_train_split_threshold():
    train = ["Heart normal. Lungs clear."] * 3 + ["Rare granuloma."]
    profile = get_profile("r2gen-legacy", dataset="iu_xray", train_reports=train)
    assert profile.references({"a": "Heart normal. Rare granuloma."})["a"] == (
        "heart normal . <unk> <unk> ."
    )
    assert profile.predictions({"a": "Lungs clear. Tiny granuloma."})["a"] == (
        "lungs clear . <unk> <unk> ."
    )
    assert "unk3" in profile.tag
    assert "nounk" in get_profile("r2gen-legacy", dataset="iu_xray").tag


def test_dataset_picks_the_cleaner_like_r2gen_else_branch():
    text = "Compared to ___ study.\nNo change.."
    synth = get_profile("r2gen-legacy", dataset="synthcxr").predictions({"a": text})["a"]
    mimic = get_profile("r2gen-legacy", dataset="mimic_cxr").predictions({"a": text})["a"]
    iu = get_profile("r2gen-legacy", dataset="iu_xray").predictions({"a": text})["a"]
    assert synth == mimic == "compared to study . no change ."
    assert iu == "compared to study no change ."  # IU's cleaner does not split on ".\n"


def test_raw_v1_leaves_text_alone_and_is_ptb_tokenized():
    profile = get_profile("raw-v1")
    text = {"a": "Heart size 2.5 cm. 1. No effusion."}
    assert profile.references(text) == text
    assert profile.predictions(text) == text
    assert profile.ptb and profile.tag == "raw-v1" and profile.ce_on_raw


def test_unknown_profile_or_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown evaluation profile"):
        get_profile("r2gen")
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_profile("r2gen-legacy", dataset="chexpert")
