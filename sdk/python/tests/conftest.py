"""Makes the SDK and the test plugins importable when pytest runs from the repository root."""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "fixtures")]
# No __pycache__ in the SDK: a newer file there makes build.rs rebuild kv-py.
sys.dont_write_bytecode = True
