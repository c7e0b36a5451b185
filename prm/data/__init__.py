"""Data sources: resumable iterators of numpy batches, selected by name from the config."""

from prm.data.source import DataSource, host_rows, make_data_source
from prm.data.toy import RepeatSource

__all__ = ["DataSource", "RepeatSource", "host_rows", "make_data_source"]
