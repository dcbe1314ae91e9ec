"""tfds datasets built from patch folders: splits, statistics, the builder, ``build_dataset``.

Importing this package does not import TensorFlow; the submodules that need it import it
themselves (``patches`` registers the ``satseg_patches`` tfds builder).
"""
