"""Evaluation of predicted Sérsic parameters against the truth (``galnet evaluate``).

``from galnet.evaluate import evaluate``; definitions in :mod:`galnet.evaluate.metrics` and
docs/evaluate.md.
"""

from galnet.evaluate.metrics import evaluate

__all__ = ["evaluate"]
