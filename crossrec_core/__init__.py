"""crossrec_core: the library behind crossrec (data, keying, splits, model, DP training, evaluation).

It never imports ``flwr``: everything here runs and is tested without a federation.
"""

__version__ = "0.1.0"
