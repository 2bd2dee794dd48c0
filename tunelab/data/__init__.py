"""Training data: read a file, recognise its format, check it, and hand TRL one shape.

    files.py     reading a data file (.jsonl, .json, .csv, .parquet) into rows; load_examples, split_eval,
                 to_dataset, summarize (its docstring shows one row of each format)
    formats.py   the eight dataset formats: their columns, detect_format, normalize to TRL's form; DataError

Their public names are re-exported here: `from tunelab.data import load_examples, DataError`.
The upload limit is read from `files.MAX_FILE_BYTES` (patch it there).
"""

from .files import EXTENSIONS, MAX_FILE_BYTES, load_examples, read_rows, split_eval, summarize, to_dataset
from .formats import (DPO_FORMATS, FORMAT_COLUMNS, FORMATS, KTO_FORMATS, OBJECTIVES, SFT_FORMATS, DataError,
                      detect_format, normalize, objective_of)

__all__ = ["EXTENSIONS", "MAX_FILE_BYTES", "load_examples", "read_rows", "split_eval", "summarize", "to_dataset",
           "DPO_FORMATS", "FORMAT_COLUMNS", "FORMATS", "KTO_FORMATS", "OBJECTIVES", "SFT_FORMATS", "DataError",
           "detect_format", "normalize", "objective_of"]
