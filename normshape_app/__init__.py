"""What normshape's Streamlit app shares (``ui.py``) and the ``normshape`` command
(``cli.py``). The app itself lies at the top of the source tree: the router and the Home
page in ``app.py`` (``streamlit run app.py``), the other pages in ``app_pages/``, its
defaults in ``.streamlit/config.toml``; an installed normshape carries the three in the same
layout as ``normshape_app/bundle/`` (pyproject.toml), which ``normshape app`` runs.

Importing this package imports nothing heavy: ``normshape train`` must not pay for Streamlit.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The app's main script, as ``streamlit run`` wants it: the installed bundle's, else the
#: source tree's.
APP_PATH = (PACKAGE_DIR / "bundle" / "app.py" if (PACKAGE_DIR / "bundle" / "app.py").is_file()
            else PACKAGE_DIR.parent / "app.py")
