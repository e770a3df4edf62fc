"""One adapter per Keras flavour: Keras 3 and tf-keras (legacy Keras 2).

May import what ``training`` may import; the rest of ``training`` reaches a
flavour's internals only through these modules.
"""
