"""Layer 1, the building blocks: the registries of datasets (``data``) and models
(``models``) and the norm layers and their modes (``norms``: PN, BN, frozen BN, dual BN)."""
