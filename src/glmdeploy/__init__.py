"""glmdeploy: serve GLM-4.7-Flash on rented Vast.ai GPUs with one command, and stop paying with another."""

__version__ = "0.1.0"
