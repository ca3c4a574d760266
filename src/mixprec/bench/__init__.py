"""Does mixed precision pay on this model and this machine? Precision sweeps, measured.

``mixprec.bench.bench(model_fn, batch_fn, loss_fn, precisions=[...])`` measures step time,
memory (allocator peak, exact byte breakdown, peak RSS), energy, the largest batch that fits a
budget and convergence parity, one row per precision; ``mixprec.bench.autobatch.largest_batch``
is the batch-size search the trainer's ``batch=-1`` uses. ``mixprec bench ...`` is the CLI
(``mixprec.bench.command``).
"""

from __future__ import annotations

from mixprec.bench.autobatch import BatchSearch, largest_batch

__all__ = ["BatchSearch", "largest_batch"]
