"""normshape's Streamlit app: the router and the Home page (``app.py``), the other pages
(``app_pages/``), what the pages share (``ui.py``) and the ``normshape`` command (``cli.py``).

Importing this package imports nothing heavy: ``normshape train`` must not pay for Streamlit.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The app's main script, as ``streamlit run`` wants it.
APP_PATH = PACKAGE_DIR / "app.py"
