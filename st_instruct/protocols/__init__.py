"""Protocols: how a forecaster is judged -- in-domain, zero-shot and few-shot evaluation beside the baselines on the
same windows, its controls, and the records of what was measured. The one layer that uses both ``training`` and
``evaluation``."""
