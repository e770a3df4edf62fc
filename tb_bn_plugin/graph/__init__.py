"""Pure GraphDef analysis: where a graph's BatchNorm layers switch between training and inference.

Owns reading graphs from files (``load``) and finding BatchNorm sites:
``sites.find_sites`` (the entry point) over ``index`` (input coercion, node
indexes, call edges, ``MalformedGraphError``), ``switch`` (Switch/Merge and
If routing, value tracing) and ``wiring`` (update ops, whether they run,
their momentum), returning ``model``'s ``BNSite`` and ``OpRef``; ``ops``
names the op types recognised; ``layers`` maps sites (named by op scope) to
the logged layer paths. May import ``numerics`` and the contract
modules; protos only, never the TensorFlow runtime (``load`` imports
TensorFlow just to parse a SavedModel container). Turning sites into
findings (``report_graph``, ``analyze_graph``) is ``diagnostics.graph``'s job.
"""
