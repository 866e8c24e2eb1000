"""Robustness results for people: the table (``table``), the figures (``figures``), the files a test
writes (``files``) and the comparison of earlier runs (``runs``, ``lipreg compare``). Every function
reads the typed :class:`lipreg.evaluation.RobustnessResult`."""

from lipreg.report.figures import close_figure, pyplot, robustness_figure, run_label, tradeoff_figure
from lipreg.report.files import (
    INCOMPLETE_MARKER,
    PARTIAL_RESULT_FILE,
    RESULT_FILE,
    publish_interrupted,
    publish_result,
    write_results,
)
from lipreg.report.runs import compare, flat_config, load_results, natural_key
from lipreg.report.table import curve_label, ensemble_summary, format_table, table_rows

__all__ = [
    "INCOMPLETE_MARKER",
    "PARTIAL_RESULT_FILE",
    "RESULT_FILE",
    "close_figure",
    "compare",
    "curve_label",
    "ensemble_summary",
    "flat_config",
    "format_table",
    "load_results",
    "natural_key",
    "publish_interrupted",
    "publish_result",
    "pyplot",
    "robustness_figure",
    "run_label",
    "table_rows",
    "tradeoff_figure",
    "write_results",
]
