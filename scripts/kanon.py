"""k-anonymity of a CSV file over its quasi-identifiers, computed by pycanon.

    python3 scripts/kanon.py dataset.csv col1,col2,...

Prints k, the size of the smallest equivalence class. The tests use it to check orgbase's
analytics dataset independently of orgbase's own SQL.
"""
import sys

import pandas as pd
from pycanon import anonymity

path, columns = sys.argv[1], sys.argv[2].split(",")
data = pd.read_csv(path, dtype=str, keep_default_na=False)
print(anonymity.k_anonymity(data, columns))
