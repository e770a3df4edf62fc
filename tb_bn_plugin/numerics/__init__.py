"""Pure numpy math of BatchNorm internals: drift, the train/inference gap, moments, the EMA error.

Owns the equations, each derived in its module's docstring, over numpy
arrays of any leading shape. May import ``formatting`` only: no TensorFlow,
Keras or TensorBoard, and nothing else of the package, so every function can
be checked against an independent computation.
"""
