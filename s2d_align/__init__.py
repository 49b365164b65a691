"""S2D-Align suite: shallow-to-deep auxiliary learning for radiology report generation.

Layers, lowest first: ``config`` -> ``data`` -> ``evaluation`` -> ``models`` -> ``training`` ->
``inference`` -> ``harness`` -> ``cli``. A module never imports a layer above its own.
"""

__version__ = "0.1.0"
