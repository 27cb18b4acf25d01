"""The app's colours, one place for pages, figures and notebooks (the words: docs/vocabulary.md):
PN blue, BN and shaped inference orange (shaped inference, where it stands beside BN, a darker
orange), the clean batch green, classes by index, misclassified red."""
from __future__ import annotations

PN_COLOR = "#1f6fb4"       # PN: population norms (running statistics)
BN_COLOR = "#e07020"       # BN: batch norms, shaped inference included
SHAPED_COLOR = "#a63603"   # shaped inference / shaped batches beside BN: BN's family, darker
CLEAN_COLOR = "#2a9d57"    # the clean batch's statistics (a reference line)
# one colour per class (up to 10), distinct from PN blue / BN orange / wrong red
CLASS_COLORS = ["#7b3294", "#008837", "#e6ab02", "#e7298a", "#666666", "#17becf", "#bcbd22",
                "#8c564b", "#c2a5cf", "#111111"]
REGION_COLORS = ["#e3d3ee", "#cfe9d6"]  # light fills of the two classes of a 2-D set
WRONG_COLOR = "#d62728"    # a misclassified (adversarial) example, as in the paper's Fig. 1


def class_color(k: int) -> str:
    return CLASS_COLORS[k % len(CLASS_COLORS)]
