"""gpseg: weakly-supervised tumour segmentation from the class maps of inherently explainable classifiers."""

from storage.numpy_env import no_madvised_hugepages

no_madvised_hugepages()  # before NumPy is imported (see storage.numpy_env)
