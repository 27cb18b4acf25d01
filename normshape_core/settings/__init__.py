"""Layer 2, the settings: ``config.TrainConfig`` (every training setting, validated in one
place against the registries of ``blocks``) and ``presets`` (per-dataset defaults)."""
