"""Evaluation protocol: NLG metrics, profiles, clinical efficacy, statistics, signatures."""
