import os
import sys

# Tests import helpers (tests/reference.py) by module name.
sys.path.insert(0, os.path.dirname(__file__))
