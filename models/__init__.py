"""The four classifiers: architectures, export in TF Serving layout and the model repository."""
