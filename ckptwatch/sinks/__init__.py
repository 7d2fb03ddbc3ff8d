"""The service's row of sinks: what happens to each run report after the engine judged it.

Order (DESIGN.md): state -> alerts -> resume pointer -> loss watch -> metrics. ``build_row`` is the one
place the row is assembled; a new action (mirror, retention) is a module with a ``Sink`` subclass and
one line here.
"""

from ckptwatch.sinks.base import Background, FaultReporter, Sink, SinkFault

__all__ = ["Background", "FaultReporter", "Sink", "SinkFault"]
