"""Figures: one function per figure the app draws, plotly only (no Streamlit).

Each function takes core results (plain numbers, arrays, result objects) and returns a
``plotly.graph_objects.Figure`` with its title, axis titles and units set, so that pages,
notebooks and tests draw the same figure. One module per subject (``playground``,
``confoundings``, ...); import the function from its module.
"""
