"""Layer 8, the studies: the paper's reproduction (``reproduce``) and its report
(``report``), the BN fixes side by side (``bn_fixes``) and the confoundings sweep
(``sweep``)."""
