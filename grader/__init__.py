"""orchard-grader's pure domain core: measurement, defect-model interface, grade rules, flags.

Imports numpy, opencv and pydantic only — never torch, onnxruntime or fastapi.
"""

__version__ = "0.1.0"
