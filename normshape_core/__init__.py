"""normshape_core: Batch-Norm Shaping in adversarial training (Zhang & Ma, ICTAI 2022).

Data flows one way: config -> data + model -> training (-> checkpoint) ->
evaluation / diagnostics / projections. This package never imports Streamlit.
"""

from ._version import __version__  # noqa: F401
