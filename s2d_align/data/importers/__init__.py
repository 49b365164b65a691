"""Importers that turn the original IU X-Ray and MIMIC-CXR distributions into R2Gen annotations."""
