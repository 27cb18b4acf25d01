"""Layer 5, training and what it writes: the loop (``trainer``), the methods and shaping
modes (``objectives``), checkpoints (``checkpoints``), torchrun (``distributed``) and one
run per folder (``runlock``)."""
