"""The command-line layer: every argparse parser of ``python -m normshape_core`` and the
``normshape`` command; it turns arguments into validated settings objects and calls the
science functions. Nothing below this layer imports argparse."""
