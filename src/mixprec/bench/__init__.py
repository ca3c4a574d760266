"""Does mixed precision pay on this model and this machine? Precision sweeps, measured.

``mixprec.bench.bench(model_fn, batch_fn, loss_fn, precisions=[...])`` measures step time,
memory (allocator peak, exact byte breakdown, peak RSS), energy, the largest batch that fits a
budget and convergence parity, one row per precision, and returns a ``BenchResult`` (JSON via
``to_json``/``save_json``). ``mixprec.bench.autobatch.largest_batch`` is the batch-size search
the trainer's ``batch=-1`` uses. ``mixprec bench ...`` is the CLI (``mixprec.cli.bench``).
"""

from __future__ import annotations

from mixprec._callable_module import make_module_callable
from mixprec.bench.autobatch import BatchSearch, largest_batch
from mixprec.bench.memory import SavedTensorMeter, StateBytes, state_bytes
from mixprec.bench.report import format_table, save_report
from mixprec.bench.result import BenchResult, BenchRow
from mixprec.bench.runner import bench
from mixprec.bench.tasks import BenchTask

__all__ = ["BatchSearch", "BenchResult", "BenchRow", "BenchTask", "SavedTensorMeter",
           "StateBytes", "bench", "format_table", "largest_batch", "save_report", "state_bytes"]

make_module_callable(__name__, bench)
