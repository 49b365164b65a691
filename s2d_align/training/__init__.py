"""Training: data and prompts, retrieval, key phrases, the one stage loop, the run pipeline."""
