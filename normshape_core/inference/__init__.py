"""Layer 3, inference with batch norm: the classifier views of a model, PN, BN and shaped
batches (``shaping``) and the other BN fixes' views (``alternatives``)."""
