"""Training data the way the offline recipes load it: records with the recipe's shape rules, then tokens."""

from __future__ import annotations

from typing import Any, Callable

from alignkit.config import TrainConfig
from alignkit.data.formats import load_records
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord, tokenize_records
from alignkit.models.loading import check_data_path, warn_data_limits

# a recipe's data-shape rules: (records, report) -> the records it trains on (drops and conversions counted)
ShapeRules = Callable[[list[PreferenceRecord], DataReport], list[PreferenceRecord]]


def load_training_records(config: TrainConfig, shape: ShapeRules) -> tuple[list[PreferenceRecord], DataReport]:
    """Load ``data.path``, apply the recipe's data-shape rules, then ``data.limit``."""
    check_data_path(config.data.path, "data.path")
    records, report = load_records(config.data.path, split=config.data.split,
                                   drop_identical=config.data.drop_identical, on_invalid=config.data.on_invalid)
    records = shape(records, report)
    if config.data.limit is not None:
        records = records[: config.data.limit]
    return records, report


def tokenize_dataset(config: TrainConfig, tokenizer: Any, records: list[PreferenceRecord],
                     report: DataReport) -> list[TokenizedRecord]:
    warn_data_limits(config.model.path, tokenizer, config.data.max_length)
    dataset = tokenize_records(tokenizer, records, max_length=config.data.max_length,
                               max_prompt_length=config.data.max_prompt_length, overlength=config.data.overlength,
                               report=report, drop_identical=config.data.drop_identical)
    if not dataset:
        raise DataError("no trainable records left", source=config.data.path)
    return dataset
