"""Layer 6, measuring trained models: the paper's tables (``evaluation`` and its resumable
records ``eval_work``), the worst case (``worst_case``), the diagnostics, the projections,
the pages' experiments and a model from the user's own code (``own_model``)."""
