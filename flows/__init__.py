"""The Prefect flows (a deployment's flow run imports this package before anything imports NumPy)."""

from storage.numpy_env import no_madvised_hugepages

no_madvised_hugepages()  # see storage.numpy_env
