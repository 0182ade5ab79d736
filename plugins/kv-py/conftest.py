"""Makes the Python SDK importable when pytest runs this plugin's tests natively."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sdk" / "python"))
# No __pycache__ here: a newer file in this folder makes build.rs rebuild the component.
sys.dont_write_bytecode = True
