"""The benchmark scripts import each other by module name (``python benchmarks/x.py`` puts their folder first on
``sys.path``); the tests here do the same."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
