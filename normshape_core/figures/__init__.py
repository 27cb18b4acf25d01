"""Figures: one function per figure the app draws, plotly (no Streamlit).

Each function takes core results (plain numbers, arrays, result objects) and returns a
``plotly.graph_objects.Figure`` with its title, axis titles and units set (one exception:
the Playground's live regions, ``playground.regions_image``, a Pillow image with the same
titles and axes, because a browser shows an image several times a second for free), so that pages,
notebooks and tests draw the same figure. One module per subject (``playground``,
``confoundings``, ...); import the function from its module:

- ``colors``: the app's palette (PN blue, BN orange, classes, misclassified red)
- ``train``: a run's live curves (loss, accuracy, PN drift)
- ``playground``: decision regions under PN and shaped inference, live curves
- ``ratios``: the training x inference ratio heatmap, the paper's Table IV
- ``moving_target``: BN statistics over PGD steps and per layer, the moving boundary
- ``decision_boundaries``: regions with eps-boxes, input slices, feature maps
- ``compare``: accuracy bars per checkpoint, training curves overlaid
- ``confoundings``: the sweep, the lessons' figures and the deck's sentences
"""
