"""Pure GraphDef analysis: where a graph's BatchNorm layers switch between training and inference.

Owns reading graphs from files (``load``) and finding BatchNorm sites,
their Switch/Merge or If routing, their moving-average updates and momentum
(``analysis``). May import ``numerics`` and the contract modules; protos
only, never the TensorFlow runtime (``load`` imports TensorFlow just to
parse a SavedModel container). Turning sites into findings is
``diagnostics.graph``'s job.
"""
