"""Data layer: R2Gen annotations, importers, the test-set audit, tokenizers and SynthCXR."""
