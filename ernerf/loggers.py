"""Loggers that keep what a resumed run logged before: Lightning's CSV logger deletes an existing metrics.csv."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """Continues an existing metrics.csv: its columns are kept and new rows appended (new columns widen it)."""

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(set(header))


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` whose metrics.csv survives `ckpt_path=last`: the resumed run's rows follow the earlier ones."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
