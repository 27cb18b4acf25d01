"""Layer 5, training and what it writes: the loop (``trainer``), its run folder's life
cycle (``run_folder``: checked, resumed, written), the methods and shaping modes
(``objectives``), checkpoints (``checkpoints``), torchrun (``distributed``) and one run per
folder (``runlock``)."""
