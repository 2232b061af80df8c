"""The built-in plugins: datasets ``tabular``, ``text``, ``timeseries``; analyzers
``summary``, ``anomalies``, ``sentiment``, ``keywords``.

Each module holds one plugin class and its instance (the object its entry point names).
Importing this package imports scikit-learn and VADER; the registry does it on demand.
"""
